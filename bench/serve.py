"""`bsegn serve` under load, against the CLI's Predictor on the same images.

    python bench/serve.py --model RUN_OR_BUNDLE [--clients 8] [--requests 25] [--images DIR] [--json out.json]

Starts `bsegn serve` as its own process on a free loopback port and waits until its model is ready.
Then C client threads (one keep-alive connection each) send R POST /predict requests each, cycling
through the images (read into memory first); every answer must be 200. It reports the requests per
second, latency percentiles, the server's resident memory before and after the load and the batch
sizes its worker formed. With the server idle, Predictor.predict_paths (what `predict` runs: batches
of 32, decoding overlapped) classifies the same C x R images in this process: the ratio of served
requests/s to the Predictor's images/s is the serving overhead (1.0: none). The Predictor runs twice, with
torch's default thread count (as `predict` does) and with the server's (half the cores), and the ratio is
taken against the faster. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(port: int, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = "benchboundary7f3a"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def client(port: int, bodies: list, count: int, offset: int, latencies: list, errors: list) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for index in range(count):
        body, content_type = bodies[(offset + index) % len(bodies)]
        started = time.perf_counter()
        try:
            connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                errors.append(f"{response.status}: {payload[:200]!r}")
            elif not json.loads(payload)["top"]:
                errors.append("empty answer")
        except (OSError, http.client.HTTPException, ValueError) as error:
            errors.append(repr(error))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies.append(time.perf_counter() - started)
    connection.close()


def default_images() -> Path:
    from shared_data import shared_data_dir  # bench/ is the script's folder: on sys.path

    shared = shared_data_dir()
    if shared is None or not (shared / "demo_images").is_dir():
        raise SystemExit("give --images DIR (../shared/data/demo_images is absent)")
    return shared / "demo_images"


def load(port: int, bodies: list, clients: int, requests: int) -> dict:
    latencies, errors = [], []
    threads = [threading.Thread(target=client, args=(port, bodies, requests, i * requests, latencies, errors))
               for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 2),
            "latency_ms_p50": round(1000 * statistics.median(latencies), 1),
            "latency_ms_p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1)}


def predictor_rate(model: str, paths: list[Path], repeats: int) -> float:
    from bsegn.app.bundle import load_bundle
    from bsegn.app.inference import Predictor

    predictor = Predictor(load_bundle(model, with_train_features=False))
    predictor.predict_paths(paths[:32])  # warm
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = predictor.predict_paths(paths)
        rates.append(len(done) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", default=None, help="folder of images (default: ../shared/data/demo_images)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--repeats", type=int, default=3, help="load rounds and Predictor rounds (median)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()

    folder = Path(args.images) if args.images else default_images()
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not images:
        raise SystemExit(f"{folder}: no images")
    bodies = [multipart(p.read_bytes(), p.name) for p in images]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bsegn.app.cli", "--log-level", "warning", "serve", "--model",
                               args.model, "--port", str(port)], cwd=REPO, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
            try:
                if get_json(port, "/health")[1]["state"] == "ready":
                    break
            except OSError:
                pass
            time.sleep(0.1)
        ready_s = time.perf_counter() - started
        load(port, bodies, args.clients, 2)  # warm: first forwards, connection set-up
        rss_before = rss_mb(server.pid)
        rounds = [load(port, bodies, args.clients, args.requests) for _ in range(args.repeats)]
        rss_after = rss_mb(server.pid)
        batches = get_json(port, "/health")[1].get("batch_sizes", {})
    finally:
        server.terminate()
        server.wait(timeout=30)
    served = statistics.median(r["requests_per_s"] for r in rounds)
    paths = [images[i % len(images)] for i in range(args.clients * args.requests)]
    import torch

    default_threads = torch.get_num_threads()
    direct_default = predictor_rate(args.model, paths, args.repeats)  # what `predict` runs: torch's own thread count
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))       # the server's default
    direct_server_threads = predictor_rate(args.model, paths, args.repeats)
    direct = max(direct_default, direct_server_threads)  # the ratio is taken against the faster of the two
    total = sum(int(k) * v for k, v in batches.items())
    result = {"model": args.model, "images": str(folder), "distinct_images": len(images), "clients": args.clients,
              "requests_per_client": args.requests, "server_ready_s": round(ready_s, 2), "rounds": rounds,
              "errors": sum(r["errors"] for r in rounds), "served_requests_per_s": served,
              "predictor_images_per_s": {f"{default_threads} threads (default)": round(direct_default, 2),
                                         f"{torch.get_num_threads()} threads (as the server)": round(direct_server_threads, 2)},
              "ratio_served_to_predictor": round(served / direct, 3),
              "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_after, 1),
              "mean_batch": round(total / max(1, sum(batches.values())), 2), "cpus": os.cpu_count()}
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
