//! The Asterisk backend: AMI (TCP 5038) to originate and follow calls, and a FastAGI server (TCP
//! 4573) that the shipped dialplan hands answered calls to, for the prompts.
//!
//! `agi` and `fastagi` are the FastAGI codec and server; the AMI codec, client and the `Backend`
//! implementation live beside them.

pub mod agi;
pub mod ami;
pub mod fastagi;
