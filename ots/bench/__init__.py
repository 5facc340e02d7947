"""`ots bench ...`: benchmarks with JSON output (training, inference, data, Gaussians, image ladder, environment)."""


def add_commands(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (JSON output)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    from ots.bench import data, env, gaussian, infer, ladder_cli, report, train_cli

    gaussian.add_bench_command(bsub)
    ladder_cli.add_bench_command(bsub)
    train_cli.add_bench_command(bsub)
    data.add_bench_command(bsub)
    infer.add_bench_command(bsub)
    env.add_bench_command(bsub)
    report.add_bench_command(bsub)
