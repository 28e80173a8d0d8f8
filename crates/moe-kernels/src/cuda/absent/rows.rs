//! Row operations on device tensors: narrow, concatenate, pad, scale rows, cast. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).
