//! The single integration-test binary for treecopy: runs the real executable against generated
//! trees. Modules split by concern; `util` holds the shared fixture and the tree oracle,
//! `hostile` the tree with one of everything an exact copy must preserve.

mod util;

mod basic;
mod cli;
mod devices;
mod errors;
mod exact;
mod hostile;
mod mirror;
mod nfs;
mod signals;
mod writeback;
