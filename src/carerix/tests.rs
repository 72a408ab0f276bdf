//! Behaviour tests against a tiny local axum server (not the emulator).
