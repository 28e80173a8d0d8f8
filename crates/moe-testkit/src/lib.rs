//! moe-testkit
