//! Maps a layer's quantization config to its quant method.

use moe_core::{MoeError, QuantAlgo, QuantConfig, QuantMethod, RejectReason, Result};

use crate::unquantized::UnquantizedMethod;

/// The quant method of `q`, or `MoeError::Unsupported` (reason `QuantUnsupported`, naming
/// the format) for formats without a method yet.
pub fn select_quant_method(q: &QuantConfig) -> Result<Box<dyn QuantMethod>> {
    match q.algo {
        QuantAlgo::None => Ok(Box::new(UnquantizedMethod)),
        other => Err(MoeError::Unsupported {
            backend: "moe-quant".into(),
            reason: RejectReason::QuantUnsupported,
            detail: format!("quant format `{}` has no quant method yet", other.as_str()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_selects_unquantized_and_others_are_refused() {
        let m = select_quant_method(&QuantConfig::default()).unwrap();
        assert_eq!(m.algo(), QuantAlgo::None);
        for algo in QuantAlgo::ALL.into_iter().filter(|&a| a != QuantAlgo::None) {
            let q = QuantConfig { algo, ..QuantConfig::default() };
            match select_quant_method(&q) {
                Err(MoeError::Unsupported { reason: RejectReason::QuantUnsupported, detail, .. }) => {
                    assert!(detail.contains(algo.as_str()), "{detail}");
                }
                Err(e) => panic!("{algo:?}: unexpected error {e}"),
                Ok(_) => panic!("{algo:?} must be refused"),
            }
        }
    }
}
