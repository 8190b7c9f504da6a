//! One module per subcommand.
pub mod data;
pub mod train;
pub mod export;
pub mod predict;
pub mod demo;
pub mod serve;
pub mod keys;
pub mod audit;
pub mod attack;
pub mod detectors;
pub mod calibrate;
pub mod alerts;
pub mod watermark;
pub mod model;
pub mod backup;
pub mod eval;
