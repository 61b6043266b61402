//! Recordings of a room's client actions, for replay by a load tester. The
//! format (shared with the load tester) is `flashcast_wire::recording`;
//! [`recorder`] writes it for a room.

pub mod recorder;
