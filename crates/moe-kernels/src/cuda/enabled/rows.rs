//! Row operations on device tensors: narrow, concatenate, pad, scale rows, cast.
