//! The guarded inference gateway: Open Inference Protocol v2 REST, auth and tiers, validation, rate limits, the protection chain, audit log and metrics.
