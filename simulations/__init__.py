"""Entry points: the `mammofl` CLI, single-node paper runs, the Table 1 grid, benchmarks."""
