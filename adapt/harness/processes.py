"""Multi-process runs: checking the flags and meeting the other processes within a time limit.

``jax.distributed.initialize`` waits for every process for its whole ``initialization_timeout``
and then aborts the process from C++ with a stack dump, with nothing said in the meantime. So
before calling it, the processes meet on the coordinator's port themselves: process 0 listens,
every other process connects and says who it is (its id and the number of processes it was
told), and process 0 answers once all have arrived. A process that is missing, a duplicate id or
a disagreeing ``--num_processes`` is then a one-line error within ``timeout`` seconds. The
listener is closed (clients hang up first, so the port is free again) before JAX's coordination
service binds the same port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

from adapt.config import ConfigError


def check_flags(coordinator: str | None, num_processes: int, process_id: int, timeout: int) -> None:
    """The multi-process flags make sense together (before anything else runs)."""
    if num_processes < 1:
        raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"--process_id={process_id} must lie in [0, {num_processes}) for "
            f"--num_processes={num_processes}"
        )
    if timeout < 1:
        raise ConfigError(f"--coordinator_timeout must be >= 1 second, got {timeout}")
    if num_processes > 1 and not coordinator:
        raise ConfigError(
            f"--num_processes={num_processes} needs --coordinator=host:port (the address process "
            "0 listens on; the same for every process)"
        )
    if coordinator:
        _address(coordinator)


def _address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator={coordinator!r} must be host:port (e.g. 10.0.0.1:9876)")
    return host, int(port)


def rendezvous(coordinator: str, num_processes: int, process_id: int, timeout: float) -> None:
    """Wait until every process has reached this point (see the module docstring)."""
    if num_processes == 1:
        return
    host, port = _address(coordinator)
    deadline = time.monotonic() + timeout
    if process_id == 0:
        _serve(port, num_processes, deadline, coordinator, timeout)
    else:
        _join(host, port, num_processes, process_id, deadline, coordinator, timeout)


def _serve(port: int, n: int, deadline: float, coordinator: str, timeout: float) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
    except OSError as e:
        server.close()
        raise ConfigError(f"process 0 cannot listen on {coordinator}: {e.strerror}") from None
    server.listen(n)
    peers: dict[int, socket.socket] = {}
    try:
        while len(peers) < n - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, n)) - set(peers))
                raise ConfigError(
                    f"process 0 waited {timeout:g} s at {coordinator} for process(es) {missing} "
                    f"of {n}; start each with --coordinator={coordinator} --num_processes={n} "
                    "--process_id=<i>, or raise --coordinator_timeout"
                )
            server.settimeout(min(left, 1.0))
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(max(deadline - time.monotonic(), 1.0))
            try:
                hello = json.loads(conn.makefile().readline() or "{}")
            except (OSError, json.JSONDecodeError):
                conn.close()
                continue
            pid, told = hello.get("process_id"), hello.get("num_processes")
            problem = None
            if told != n:
                problem = (
                    f"process {pid} was started with --num_processes={told}, process 0 with {n}"
                )
            elif pid in peers or not isinstance(pid, int) or not 0 < pid < n:
                problem = f"two processes claim --process_id={pid} (or it is out of range)"
            if problem:
                conn.sendall((json.dumps({"error": problem}) + "\n").encode())
                conn.close()
                raise ConfigError(problem)
            peers[pid] = conn
        for conn in peers.values():
            conn.sendall(b'{"go": true}\n')
        for conn in peers.values():  # let the peers hang up first: the port stays free
            conn.settimeout(10.0)
            with contextlib.suppress(OSError):
                conn.recv(1)
    finally:
        for conn in peers.values():
            conn.close()
        server.close()


def _join(
    host: str, port: int, n: int, pid: int, deadline: float, coordinator: str, timeout: float
) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConfigError(
                f"process {pid} could not reach process 0 at {coordinator} within {timeout:g} s; "
                "start process 0 (--process_id=0) with the same --coordinator, or raise "
                "--coordinator_timeout"
            )
        try:
            conn = socket.create_connection((host, port), timeout=min(left, 2.0))
            break
        except OSError:
            time.sleep(0.2)
    with conn:
        conn.sendall((json.dumps({"process_id": pid, "num_processes": n}) + "\n").encode())
        conn.settimeout(max(deadline - time.monotonic(), 1.0))
        try:
            answer = json.loads(conn.makefile().readline() or "{}")
        except (OSError, json.JSONDecodeError):
            answer = {}
        if "error" in answer:
            raise ConfigError(answer["error"])
        if not answer.get("go"):
            raise ConfigError(
                f"process {pid}: process 0 at {coordinator} did not confirm that all {n} "
                f"processes arrived within {timeout:g} s; raise --coordinator_timeout"
            )


def initialize(coordinator: str, num_processes: int, process_id: int, timeout: int) -> None:
    """Meet the other processes, then ``jax.distributed.initialize`` with gloo CPU collectives."""
    import jax

    rendezvous(coordinator, num_processes, process_id, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout,
    )


__all__ = ["check_flags", "initialize", "rendezvous"]
