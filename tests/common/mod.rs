// Each test binary compiles this module tree anew and uses only part of it: unused items
// would be dead_code warnings (errors under clippy -D warnings) in the others.
#![allow(dead_code)]

pub mod bin;
pub mod hostile;
pub mod lapi;
pub mod lease;
pub mod observe;
pub mod proxy;
pub mod recorder;
pub mod world;
