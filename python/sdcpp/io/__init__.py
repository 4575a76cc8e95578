"""Readers: each turns one kind of file into `RawTensor`s (raw names, dtype, shape, byte range).
Nothing here knows about model families; names are made canonical in `sdcpp.names`."""
