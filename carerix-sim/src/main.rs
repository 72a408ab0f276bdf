//! The `carerix-sim` binary: runs the emulator until Ctrl-C.
fn main() {}
