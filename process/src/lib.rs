//! What each ferry process (`ferry`, `ferry-agent`) sets up for itself,
//! apart from the multiplexer: where its logs go, how its allocator is
//! tuned, where its state lives and how the instance's secret file is
//! read and created.

pub mod alloc;
pub mod logging;
pub mod secret_file;
