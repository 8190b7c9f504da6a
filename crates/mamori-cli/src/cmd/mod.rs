//! One module per subcommand.
pub mod alerts;
pub mod attack;
pub mod audit;
pub mod backup;
pub mod calibrate;
pub mod data;
pub mod demo;
pub mod detectors;
pub mod eval;
pub mod export;
pub mod keys;
pub mod model;
pub mod predict;
pub mod serve;
pub mod train;
pub mod watermark;
