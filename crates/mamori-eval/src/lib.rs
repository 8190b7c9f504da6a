//! Evaluation harness: attack x defense matrices through the real protection chain, with benign traffic, and reports.
