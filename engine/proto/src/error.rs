//! placeholder
/// placeholder
#[derive(Debug)] pub struct Error;
