//! Output defenses (label-only, top-k, rounding, keyed noise, reverse sigmoid, misinformation, prediction poisoning), DAWN watermarking and ownership verification.
