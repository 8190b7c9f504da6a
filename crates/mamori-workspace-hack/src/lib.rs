//! Empty: exists only for its dependency list (see Cargo.toml).
