//! Maps a layer's quantization config to its quant method.

use moe_core::{QuantAlgo, QuantConfig, QuantMethod, Result};

use crate::fp8_block::Fp8BlockMethod;
use crate::fp8_per_tensor::Fp8PerTensorMethod;
use crate::host::HostQuantMethod;
use crate::int4_group::Int4GroupMethod;
use crate::int8_channel::Int8ChannelMethod;
use crate::mxfp4::Mxfp4Method;
use crate::nvfp4::Nvfp4Method;
use crate::unquantized::UnquantizedMethod;

/// The quant method of `q`, with the kernel views the host backends need. Format parameters
/// default as TensorRT-LLM's do (FP8 block `[128, 128]`, INT4 group 128); an unusable one
/// (an empty block, an odd group) is `MoeError::InvalidConfig` naming the field. Parameters a
/// format does not use are ignored.
pub fn select_host_quant_method(q: &QuantConfig) -> Result<Box<dyn HostQuantMethod>> {
    Ok(match q.algo {
        QuantAlgo::None => Box::new(UnquantizedMethod),
        QuantAlgo::Fp8PerTensor => Box::new(Fp8PerTensorMethod),
        QuantAlgo::Fp8Block => Box::new(Fp8BlockMethod::new(
            q.weight_block_size.unwrap_or(Fp8BlockMethod::DEFAULT_BLOCK),
        )?),
        QuantAlgo::Nvfp4 => Box::new(Nvfp4Method),
        QuantAlgo::W4A16Mxfp4 => Box::new(Mxfp4Method),
        QuantAlgo::W4A16Int4 => Box::new(Int4GroupMethod::new(
            q.group_size.unwrap_or(Int4GroupMethod::DEFAULT_GROUP),
        )?),
        QuantAlgo::W8A16 => Box::new(Int8ChannelMethod),
    })
}

/// The quant method of `q` (see [`select_host_quant_method`]).
pub fn select_quant_method(q: &QuantConfig) -> Result<Box<dyn QuantMethod>> {
    Ok(select_host_quant_method(q)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;
    use moe_core::{EplbSupportStatus, MoeError};

    #[test]
    fn every_format_selects_its_method_with_its_descriptors_name_and_eplb_status() {
        use EplbSupportStatus::*;
        // The spec's EPLB statuses (A.4), restated so a descriptor edit is a visible decision.
        let want = [
            (QuantAlgo::None, Supported),
            (QuantAlgo::Fp8PerTensor, NotSupported),
            (QuantAlgo::Fp8Block, NotVerified),
            (QuantAlgo::Nvfp4, Supported),
            (QuantAlgo::W4A16Mxfp4, Supported),
            (QuantAlgo::W4A16Int4, NotSupported),
            (QuantAlgo::W8A16, NotSupported),
        ];
        assert_eq!(want.len(), QuantAlgo::ALL.len());
        for (algo, eplb) in want {
            let m = select_quant_method(&QuantConfig {
                algo,
                ..QuantConfig::default()
            })
            .unwrap();
            assert_eq!(m.algo(), algo);
            assert_eq!(m.name(), algo.descriptor().method);
            assert_eq!(m.eplb_support_status(), eplb, "{algo:?}");
            assert!(!m.need_load_shared_weights());
        }
    }

    /// The `Format` of `q`, for the tests that compare a method's declarations with its
    /// descriptor (the method types are selected by the `match` above).
    fn format_of(q: &QuantConfig) -> Box<dyn Format> {
        let d = q.algo.descriptor();
        match q.algo {
            QuantAlgo::None => Box::new(UnquantizedMethod),
            QuantAlgo::Fp8PerTensor => Box::new(Fp8PerTensorMethod),
            QuantAlgo::Fp8Block => Box::new(Fp8BlockMethod::new(d.block(q).unwrap()).unwrap()),
            QuantAlgo::Nvfp4 => Box::new(Nvfp4Method),
            QuantAlgo::W4A16Mxfp4 => Box::new(Mxfp4Method),
            QuantAlgo::W4A16Int4 => Box::new(Int4GroupMethod::new(d.group(q).unwrap()).unwrap()),
            QuantAlgo::W8A16 => Box::new(Int8ChannelMethod),
        }
    }

    /// Each method loads exactly its descriptor's checkpoint tensors (suffix, dtypes, geometry)
    /// and creates and registers exactly its descriptor's per-slot tensors, so the descriptor
    /// that `moe-hf`, the capability tables and the test kit read cannot drift from the code
    /// that loads the weights.
    #[test]
    fn every_method_matches_its_descriptor() {
        use crate::format::Geometry;
        use crate::test_util::{layout, method};
        use moe_core::Activation;
        use moe_core::quant_format::{CheckpointShape, FormatParam};

        assert_eq!(
            FormatParam::Block(Fp8BlockMethod::DEFAULT_BLOCK),
            QuantAlgo::Fp8Block.descriptor().param
        );
        assert_eq!(
            FormatParam::Group(Int4GroupMethod::DEFAULT_GROUP),
            QuantAlgo::W4A16Int4.descriptor().param
        );
        for q in [
            QuantConfig::default(),
            QuantConfig {
                weight_block_size: Some([64, 32]),
                group_size: Some(32),
                ..QuantConfig::default()
            },
        ] {
            for algo in QuantAlgo::ALL {
                let q = QuantConfig { algo, ..q.clone() };
                let d = algo.descriptor();
                let f = format_of(&q);
                let specs: Vec<_> = f
                    .specs()
                    .iter()
                    .map(|s| (s.suffix, s.accepted.to_vec(), s.geometry))
                    .collect();
                let want: Vec<_> = d
                    .checkpoint
                    .iter()
                    .filter(|t| t.suffix != "input_scale")
                    .map(|t| {
                        let geometry = match t.shape {
                            CheckpointShape::Blocks { rows, cols, exact } => Geometry::Matrix {
                                rows: d.extent(rows, &q),
                                cols: d.extent(cols, &q),
                                exact,
                            },
                            CheckpointShape::PerRow => Geometry::PerRow,
                            CheckpointShape::Scalar => Geometry::Scalar,
                        };
                        (t.suffix, t.dtypes.to_vec(), geometry)
                    })
                    .collect();
                assert_eq!(specs, want, "{algo:?}");
                assert_eq!(f.input_scales().is_some(), d.activation.reads_input_scale(), "{algo:?}");

                let m = method(&q);
                let l = layout(Activation::Swiglu, false, 1, 0, vec![0, 1]);
                let mut registered: Vec<String> = m.expert_tensors(&l).into_iter().map(|r| r.name).collect();
                let mut want: Vec<String> = d.slot_tensors.iter().map(|s| s.to_string()).collect();
                registered.sort();
                want.sort();
                assert_eq!(registered, want, "{algo:?}");
            }
        }
    }

    #[test]
    fn unusable_format_parameters_name_the_field() {
        let bad = [
            QuantConfig {
                algo: QuantAlgo::Fp8Block,
                weight_block_size: Some([0, 128]),
                group_size: None,
            },
            QuantConfig {
                algo: QuantAlgo::W4A16Int4,
                weight_block_size: None,
                group_size: Some(0),
            },
            QuantConfig {
                algo: QuantAlgo::W4A16Int4,
                weight_block_size: None,
                group_size: Some(33),
            },
        ];
        for q in bad {
            match select_quant_method(&q) {
                Err(MoeError::InvalidConfig { field, .. }) => assert!(field.starts_with("quant."), "{field}"),
                Err(e) => panic!("{q:?}: unexpected error {e}"),
                Ok(_) => panic!("{q:?} must be refused"),
            }
        }
    }
}
