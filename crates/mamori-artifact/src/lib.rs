//! Model artifact protection: encryption at rest, ed25519 signing, supply-chain pins, backups.
