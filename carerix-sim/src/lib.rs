//! `carerix-sim`: an emulator of the public Carerix API.
