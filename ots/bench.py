"""`ots bench ...`: benchmarks with JSON output."""


def add_commands(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (JSON output)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    from ots import gaussian, infer, train_bench
    from ots.data import bench as data_bench

    gaussian.add_bench_command(bsub)
    train_bench.add_bench_command(bsub)
    data_bench.add_bench_command(bsub)
    infer.add_bench_command(bsub)
