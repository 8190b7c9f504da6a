//! Per-client stateful detectors of model extraction and adversarial search (PRADA, k-NN distance, Blacklight, OOD rate, HODA, volume), calibration and escalation policy.
