"""Example buyer job: train a tiny model data-parallel on every worker, then run inference.

Submit it to your cluster with the environment from GET /v1/clusters/{id}/connection:
    ray job submit --working-dir examples -- python train.py
Each task prints which provider machine ran it (the node labels the platform sets).
"""

import socket
import time

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

try:  # torch is optional: numpy does the same job when it is not installed
    import torch
except ImportError:
    torch = None


def where() -> dict:
    labels = ray.get_runtime_context().get_node_labels()
    return {
        "machine": labels.get("dcluster.io/machine", "?"),
        "provider": labels.get("dcluster.io/provider", "?"),
        "gpu": labels.get("dcluster.io/gpu", "?"),
        "host": socket.gethostname(),
        "gpu_ids": ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
    }


@ray.remote(num_cpus=1)
def train_shard(shard: int, data: list, epochs: int = 50) -> dict:
    x = np.array(data, dtype=np.float64)
    rng = np.random.default_rng(shard)
    w = rng.normal(size=x.shape)
    for _ in range(epochs):  # gradient steps towards the shard's data
        w -= 0.1 * (w - x)
    if torch is not None:
        w = torch.tensor(w).double().numpy()
    return {"shard": shard, "weights": w.tolist(), "where": where()}


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def run_inference(weights: list, input_data: list) -> dict:
    return {"prediction": float(np.dot(np.array(weights), np.array(input_data))), "where": where()}


def main() -> None:
    ray.init()
    workers = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    print(f"cluster: {len(ray.nodes())} node(s), {len(workers)} worker(s) with CPUs; torch: {torch is not None}")
    start = time.time()
    data = [1.0, 2.0, 3.0, 4.0, 5.0]
    # One shard per worker node, pinned there: data parallel over every machine leased.
    pinned = [NodeAffinitySchedulingStrategy(w["NodeID"], soft=False) for w in workers] or ["DEFAULT"]
    results = ray.get([train_shard.options(scheduling_strategy=s).remote(i, data) for i, s in enumerate(pinned)])
    for r in results:
        w = r["where"]
        print(
            f"train shard {r['shard']} ran on machine {w['machine']} (provider {w['provider']}, "
            f"gpu {w['gpu']}, gpu ids {w['gpu_ids']})"
        )
    model = np.mean([r["weights"] for r in results], axis=0).tolist()
    inference = ray.get(run_inference.remote(model, [0.5, 1.5, 2.5, 3.5, 4.5]))
    print(f"inference ran on machine {inference['where']['machine']}: prediction {inference['prediction']:.3f}")
    machines = sorted({r["where"]["machine"] for r in results})
    print(f"MACHINES {' '.join(machines)}")
    print(f"done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
