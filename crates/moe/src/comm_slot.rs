//! The assembler's slot for the layer's communication strategy. Schedulers reach the
//! strategy only through it; replacing an infeasible all-to-all by AllGather+ReduceScatter
//! happens here, logged and counted.

use moe_core::{CommHandle, Communication, Result};

/// Builds the fallback strategy (AllGather+ReduceScatter) on demand.
pub type FallbackFactory = Box<dyn FnMut() -> Result<Box<dyn Communication>> + Send>;

#[derive(Default)]
pub(crate) struct CommSlot {
    strategy: Option<Box<dyn Communication>>,
    fallback: Option<FallbackFactory>,
    /// How many times a strategy was replaced by the fallback (for reports and tests).
    pub(crate) fallbacks: usize,
}

impl CommSlot {
    pub(crate) fn new(strategy: Option<Box<dyn Communication>>, fallback: Option<FallbackFactory>) -> Self {
        CommSlot {
            strategy,
            fallback,
            fallbacks: 0,
        }
    }

    pub(crate) fn name(&self) -> Option<&'static str> {
        self.strategy.as_ref().map(|s| s.name())
    }

    pub(crate) fn destroy(&mut self) -> Result<()> {
        match self.strategy.as_mut() {
            Some(s) => s.destroy(),
            None => Ok(()),
        }
    }
}

impl CommHandle for CommSlot {
    fn strategy(&mut self) -> Option<&mut (dyn Communication + 'static)> {
        self.strategy.as_deref_mut()
    }

    fn determine_communication_method(&mut self, all_rank_num_tokens: &[usize], num_chunks: usize) -> Result<()> {
        let Some(current) = self.strategy.as_mut() else {
            return Ok(());
        };
        if !current.is_alltoall() || current.is_workload_feasible(all_rank_num_tokens, num_chunks) {
            return Ok(());
        }
        let Some(make) = self.fallback.as_mut() else {
            return Ok(());
        };
        let replacement = make()?;
        tracing::warn!(
            from = current.name(),
            to = replacement.name(),
            ?all_rank_num_tokens,
            num_chunks,
            "all-to-all infeasible for this workload; falling back"
        );
        current.destroy()?;
        self.strategy = Some(replacement);
        self.fallbacks += 1;
        Ok(())
    }
}
