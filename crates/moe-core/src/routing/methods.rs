//! Routing math (placeholder until the routing methods land).

use super::{RoutingMethod, RoutingOutput};
use crate::error::{MoeError, Result};

pub(super) fn apply(m: &RoutingMethod, _logits: &[f32], _n: usize, _e: usize) -> Result<RoutingOutput> {
    Err(MoeError::config("routing", format!("{} is not implemented yet", m.name())))
}
