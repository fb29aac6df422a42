"""Run every benchmark (`make bench`)."""

from benchmarks import data_throughput, data_vs_compute, planning, scaleout

if __name__ == "__main__":
    print("== data_vs_compute ==")
    data_vs_compute.main([])
    print("\n== data_throughput ==")
    data_throughput.main([])
    print("\n== scaleout (DDP vs FSDP, 2 gloo processes) ==")
    scaleout.main([])
    print("\n== planning (candidates/s per planner) ==")
    planning.main([])
