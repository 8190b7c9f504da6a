//! Attack harness: oracles with query accounting, extraction (random, Knockoff, JBDA, active, Tramèr), model inversion and membership inference.
