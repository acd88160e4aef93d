pub mod clients;
pub mod frames;
pub mod gateway;
pub mod procfs;
