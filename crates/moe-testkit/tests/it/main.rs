//! The one integration binary of moe-testkit: the whole matrix over every registered
//! backend, and the kit's own helpers (tolerances, skip decisions, fixtures, generated docs).

mod capabilities;
mod fixtures;
mod matrix;
mod rng;
mod skip;
mod tolerance;
