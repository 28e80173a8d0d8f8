//! The test matrix as data: backend x dtype x routing method x shape x chunking, plus
//! smaller sweeps over the other activations, weight-on-input, parallel modes (EP, TP,
//! attention-DP over each communication strategy) and the quantized formats. Cells are
//! generated, never skipped here: which cells a backend cannot run is decided by its
//! `can_implement` (see [`crate::skip`]).
//!
//! Shapes follow TensorRT-LLM's `e{E}_k{k}_h{H}_i{I}` ids, scaled down so the whole matrix
//! runs in seconds on two cores; prime expert counts (7, 13) and `k = E` are kept because
//! they break partitioning and top-k assumptions that powers of two hide.

use moe_core::{Activation, DType, MoeConfig, ParallelConfig, QuantAlgo, RoutingMethod};

use crate::rng::{SplitMix64, seed_of};

/// An expert-layer geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub num_experts: usize,
    pub top_k: usize,
    pub hidden: usize,
    pub intermediate: usize,
}

impl Shape {
    pub const fn new(num_experts: usize, top_k: usize, hidden: usize, intermediate: usize) -> Shape {
        Shape {
            num_experts,
            top_k,
            hidden,
            intermediate,
        }
    }

    /// `e8_k2_h32_i48`.
    pub fn id(&self) -> String {
        format!(
            "e{}_k{}_h{}_i{}",
            self.num_experts, self.top_k, self.hidden, self.intermediate
        )
    }
}

/// The shapes of the main product.
pub const SHAPES: [Shape; 4] = [
    Shape::new(8, 2, 32, 48),
    // Prime expert counts: no grouping for DeepSeek-V3, uneven EP partitions.
    Shape::new(7, 2, 32, 48),
    Shape::new(13, 3, 32, 64),
    // Every expert selected.
    Shape::new(4, 4, 16, 32),
];

/// Activation dtypes.
pub const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// `moe_max_num_tokens`: unchunked, one token per chunk, and a chunk that leaves a remainder.
pub const CHUNKINGS: [Option<usize>; 3] = [None, Some(1), Some(16)];

/// The shape of the quantization sweep: H and I multiples of 128, the block and group size
/// of every quantized format (TensorRT-LLM skips quantized cells that are not).
pub const QUANT_SHAPE: Shape = Shape::new(8, 2, 128, 128);

/// Tokens per cell: odd and not a multiple of 16, so chunking leaves a short last chunk.
pub const NUM_TOKENS: usize = 19;

/// How a cell's layer is spread over in-process ranks (threads of `moe_comm::InProcessGroup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parallel {
    pub ep: usize,
    pub tp: usize,
    /// Attention-DP: every rank brings its own share of the tokens.
    pub dp: bool,
    /// `moe::COMM_NAMES` strategy.
    pub comm: &'static str,
}

impl Parallel {
    /// One rank, no communication.
    pub const SINGLE: Parallel = Parallel {
        ep: 1,
        tp: 1,
        dp: false,
        comm: "auto",
    };

    pub fn world(&self) -> usize {
        self.ep * self.tp
    }

    /// `""` for a single rank, else `-ep2-allgather`, `-ep2dp-alltoall`, `-tp2-allgather`.
    pub fn id(&self) -> String {
        if self.world() == 1 {
            return String::new();
        }
        let mut s = String::from("-");
        if self.ep > 1 {
            s.push_str(&format!("ep{}", self.ep));
        }
        if self.tp > 1 {
            s.push_str(&format!("tp{}", self.tp));
        }
        if self.dp {
            s.push_str("dp");
        }
        format!("{s}-{}", self.comm)
    }
}

/// The parallel sweep: each strategy where it is valid (all-to-all and packed need
/// attention-DP and no MoE-TP; replicated tokens and MoE-TP need the all-gather family).
pub const PARALLEL_MODES: [Parallel; 4] = [
    Parallel {
        ep: 2,
        tp: 1,
        dp: false,
        comm: "allgather",
    },
    Parallel {
        ep: 2,
        tp: 1,
        dp: true,
        comm: "alltoall",
    },
    Parallel {
        ep: 2,
        tp: 1,
        dp: true,
        comm: "packed",
    },
    Parallel {
        ep: 1,
        tp: 2,
        dp: false,
        comm: "allgather",
    },
];

/// What the experts compute besides the routing: activation, biases, where the routing
/// weight is applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flavor {
    pub activation: Activation,
    pub bias: bool,
    pub weight_on_input: bool,
}

impl Flavor {
    pub const SWIGLU: Flavor = Flavor {
        activation: Activation::Swiglu,
        bias: false,
        weight_on_input: false,
    };

    /// `swiglu`, `swiglu_gptoss+bias`, `swiglu+woi`.
    pub fn id(&self) -> String {
        let mut s = self.activation.name().to_string();
        if self.bias {
            s.push_str("+bias");
        }
        if self.weight_on_input {
            s.push_str("+woi");
        }
        s
    }
}

/// The flavours of the activation sweep (GPT-OSS carries biases, as its checkpoints do).
pub fn sweep_flavors() -> [Flavor; 2] {
    [
        Flavor {
            activation: Activation::GPT_OSS,
            bias: true,
            weight_on_input: false,
        },
        Flavor {
            activation: Activation::Relu2,
            bias: false,
            weight_on_input: false,
        },
    ]
}

/// One cell of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub backend: String,
    pub dtype: DType,
    pub shape: Shape,
    pub routing: RoutingMethod,
    pub flavor: Flavor,
    pub chunking: Option<usize>,
    pub num_tokens: usize,
    pub quant: QuantAlgo,
    pub parallel: Parallel,
}

impl Cell {
    /// `cpu-bf16-e8_k2_h32_i48-renormalize-swiglu-chunk16` (`..-swiglu-fp8-chunk16` when
    /// quantized).
    pub fn id(&self) -> String {
        format!(
            "{}-{}-chunk{}{}",
            self.backend,
            self.data_key(),
            self.chunking.map_or("none".into(), |c| c.to_string()),
            self.parallel.id()
        )
    }

    /// Everything that determines the layer's data and exact output: the id without backend
    /// and chunking. Cells with equal keys share weights, inputs and oracle.
    pub fn data_key(&self) -> String {
        let quant = if self.quant == QuantAlgo::None {
            String::new()
        } else {
            format!("-{}", self.quant.as_str())
        };
        format!(
            "{}-{}-{}-{}{quant}",
            self.dtype,
            self.shape.id(),
            self.routing.name(),
            self.flavor.id()
        )
    }

    /// The layer config the cell builds, with its backend requested.
    pub fn config(&self) -> MoeConfig {
        let s = self.shape;
        let mut c = MoeConfig::new(
            s.num_experts,
            s.hidden,
            s.intermediate,
            self.dtype,
            self.routing.clone(),
        );
        c.activation = self.flavor.activation;
        c.bias = self.flavor.bias;
        c.apply_router_weight_on_input = self.flavor.weight_on_input;
        c.moe_max_num_tokens = self.chunking;
        c.backend = Some(self.backend.clone());
        c.quant.algo = self.quant;
        // Rank 0's view; the runner gives every other rank its own index.
        c.parallel = ParallelConfig {
            ep_size: self.parallel.ep,
            ep_rank: 0,
            tp_size: self.parallel.tp,
            tp_rank: 0,
            attention_dp: self.parallel.dp,
        };
        match self.quant {
            QuantAlgo::Fp8Block => c.quant.weight_block_size = Some([128, 128]),
            QuantAlgo::W4A16Int4 => c.quant.group_size = Some(128),
            _ => {}
        }
        c
    }
}

/// The DeepSeek-V3 grouping for `E` experts: the largest `n_group <= 4` that divides `E`
/// into groups of at least two (groups are scored by their top-2), and the smallest
/// `topk_group >= min(2, n_group)` whose groups hold `k` experts.
pub fn deepseek_groups(num_experts: usize, top_k: usize) -> (usize, usize) {
    let n_group = (1..=4)
        .rev()
        .find(|g| num_experts.is_multiple_of(*g) && (*g == 1 || num_experts / g >= 2))
        .unwrap_or(1);
    let per_group = num_experts / n_group;
    let topk_group = (n_group.min(2)..=n_group)
        .find(|tg| tg * per_group >= top_k)
        .unwrap_or(n_group);
    (n_group, topk_group)
}

/// Every routing method, with parameters that fit `shape` (biases random but fixed per
/// shape; the static table holds distinct experts per row for `num_tokens` rows).
pub fn routing_methods(shape: Shape, num_tokens: usize) -> Vec<RoutingMethod> {
    let (e, k) = (shape.num_experts, shape.top_k);
    let mut rng = SplitMix64::new(seed_of(&format!("routing-{}", shape.id())));
    let mut bias = || Some(rng.normal_vec(e, 0.5));
    let (n_group, topk_group) = deepseek_groups(e, k);
    let methods = vec![
        RoutingMethod::Default { top_k: k },
        RoutingMethod::Renormalize { top_k: k },
        RoutingMethod::RenormalizeNaive { top_k: k },
        RoutingMethod::Llama4 { top_k: k },
        RoutingMethod::DeepSeekV3 {
            top_k: k,
            n_group,
            topk_group,
            routed_scaling_factor: 2.5,
            e_score_correction_bias: bias(),
            renormalize: true,
        },
        RoutingMethod::DeepSeekV4 {
            top_k: k,
            routed_scaling_factor: 1.5,
            bias: bias(),
        },
        RoutingMethod::MiniMax2 {
            top_k: k,
            bias: bias(),
            routed_scaling_factor: 1.0,
        },
        RoutingMethod::SqrtSoftplus { top_k: k, bias: bias() },
        RoutingMethod::SigmoidRenorm {
            top_k: k,
            renormalize: true,
        },
        RoutingMethod::SparseMixer { top_k: k, eps: 0.01 },
        static_table(shape, num_tokens),
        RoutingMethod::LoadBalanced { top_k: k },
    ];
    debug_assert_eq!(
        methods.len(),
        RoutingMethod::NAMES.len(),
        "a routing method is missing from the matrix"
    );
    methods
}

fn static_table(shape: Shape, num_tokens: usize) -> RoutingMethod {
    let (e, k) = (shape.num_experts, shape.top_k);
    let mut rng = SplitMix64::new(seed_of(&format!("static-{}", shape.id())));
    let mut ids = Vec::with_capacity(num_tokens * k);
    for _ in 0..num_tokens {
        // Partial Fisher-Yates: k distinct experts per row.
        let mut experts: Vec<i32> = (0..e as i32).collect();
        for j in 0..k {
            let pick = j + rng.below(e - j);
            experts.swap(j, pick);
        }
        ids.extend_from_slice(&experts[..k]);
    }
    let scales = (0..num_tokens * k)
        .map(|_| 0.25 + 0.5 * rng.next_f64() as f32)
        .collect();
    RoutingMethod::Static {
        top_k: k,
        ids,
        scales: Some(scales),
    }
}

/// Whether a method's output depends on a token's position in the batch rather than on its
/// logits alone. Such methods are crossed only with `chunking = None`: splitting the batch
/// changes their output by definition, so chunk invariance (invariant 11) is not defined.
pub fn position_dependent(m: &RoutingMethod) -> bool {
    matches!(m, RoutingMethod::Static { .. } | RoutingMethod::LoadBalanced { .. })
}

/// The whole matrix for `backends` (normally `moe::BACKEND_NAMES`), backend-major.
pub fn cells(backends: &[&str]) -> Vec<Cell> {
    let mut out = Vec::new();
    for backend in backends {
        let mut push = |dtype: DType,
                        shape: Shape,
                        routing: &RoutingMethod,
                        flavor: Flavor,
                        chunking: Option<usize>,
                        quant,
                        parallel: Parallel| {
            if chunking.is_some() && position_dependent(routing) {
                return;
            }
            out.push(Cell {
                backend: backend.to_string(),
                dtype,
                shape,
                routing: routing.clone(),
                flavor,
                chunking,
                num_tokens: NUM_TOKENS,
                quant,
                parallel,
            });
        };
        for dtype in DTYPES {
            for shape in SHAPES {
                let methods = routing_methods(shape, NUM_TOKENS);
                for routing in &methods {
                    for chunking in CHUNKINGS {
                        push(
                            dtype,
                            shape,
                            routing,
                            Flavor::SWIGLU,
                            chunking,
                            QuantAlgo::None,
                            Parallel::SINGLE,
                        );
                    }
                }
                // The activation sweep: one routing method, every chunking.
                for flavor in sweep_flavors() {
                    for chunking in CHUNKINGS {
                        push(
                            dtype,
                            shape,
                            &methods[1],
                            flavor,
                            chunking,
                            QuantAlgo::None,
                            Parallel::SINGLE,
                        );
                    }
                }
            }
            // Llama4 applies its top-1 weight to the expert input.
            let woi = Flavor {
                weight_on_input: true,
                ..Flavor::SWIGLU
            };
            for chunking in CHUNKINGS {
                push(
                    dtype,
                    Shape::new(8, 1, 32, 48),
                    &RoutingMethod::Llama4 { top_k: 1 },
                    woi,
                    chunking,
                    QuantAlgo::None,
                    Parallel::SINGLE,
                );
            }
        }
        // The parallel sweep: two in-process ranks per strategy, an expert count that splits
        // unevenly (7) and one that does not, two routing methods.
        for dtype in [DType::F32, DType::BF16] {
            for shape in [SHAPES[0], SHAPES[1]] {
                let methods = routing_methods(shape, NUM_TOKENS);
                for routing in [&methods[1], &methods[4]] {
                    for parallel in PARALLEL_MODES {
                        let chunking = if parallel.comm == "packed" { Some(16) } else { None };
                        push(
                            dtype,
                            shape,
                            routing,
                            Flavor::SWIGLU,
                            chunking,
                            QuantAlgo::None,
                            parallel,
                        );
                    }
                }
            }
        }
        // The quantization sweep: every format on bf16 activations, unchunked and chunked.
        let renormalize = RoutingMethod::Renormalize {
            top_k: QUANT_SHAPE.top_k,
        };
        for quant in QuantAlgo::ALL.into_iter().filter(|q| *q != QuantAlgo::None) {
            for chunking in [None, Some(16)] {
                push(
                    DType::BF16,
                    QUANT_SHAPE,
                    &renormalize,
                    Flavor::SWIGLU,
                    chunking,
                    quant,
                    Parallel::SINGLE,
                );
            }
        }
    }
    out
}
