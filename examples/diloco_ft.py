"""DiLoCo-style training over backend "pycomm"'s fault-tolerant engine, with a peer killed and
another joining mid-run.

Each peer trains its own copy of a small MLP for ``--inner-steps`` AdamW steps on its own data, then
the peers average their "outer gradients" (global parameters minus local ones) with one
``dist.all_reduce(op=AVG)`` and apply it with Nesterov-momentum SGD, so every peer holds the same
global parameters after each outer step. When a peer dies, the all-reduce raises
``DistBackendError`` on every survivor; they call ``pycomm.torch.reform()`` and go on. Peers that
arrive wait until the members admit them (``pending_peers()`` / ``update_topology()`` at the end of an
outer step), and then receive the global state from a member.

    python examples/diloco_ft.py                 # master + 3 peers; one killed, one joins
    python examples/diloco_ft.py --no-churn      # the same run without churn, for comparison
    python examples/diloco_ft.py --overlap       # each outer all-reduce overlaps the next inner steps

With ``--overlap`` the outer all-reduce runs (``async_op=True``) while the peer takes the next
round's inner steps; its result is applied one round late, and each peer keeps the progress of the
round in flight on top of the new global parameters.

The driver prints each outer step's loss, the kill and the join, and a summary; it exits non-zero
when a peer failed or when the peers that finished disagree on the final parameters.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import threading
import time

EVAL_SEED = 12345


def _model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 1),
    )


def _batch(generator, size: int = 64):
    """Samples of a fixed smooth function of 16 inputs, with a little noise."""
    import torch

    inputs = torch.randn(size, 16, generator=generator)
    targets = torch.sin(inputs[:, :8].sum(1, keepdim=True)) + 0.5 * torch.cos(
        inputs[:, 8:].sum(1, keepdim=True)
    )
    return inputs, targets + 0.01 * torch.randn(size, 1, generator=generator)


def _evaluation_loss(model) -> float:
    import torch

    inputs, targets = _batch(torch.Generator().manual_seed(EVAL_SEED), 2048)
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(inputs), targets))


class _State:
    """The global state every peer holds identically: parameters, outer momentum, outer step."""

    def __init__(self, model) -> None:
        import torch
        from torch.nn.utils import parameters_to_vector

        self.parameters = parameters_to_vector(model.parameters()).detach().clone()
        self.momentum = torch.zeros_like(self.parameters)
        self.step = torch.zeros(1, dtype=torch.int64)

    def synchronize(self) -> None:
        """Every peer takes the state of the lowest rank among those furthest along."""
        import torch
        import torch.distributed as dist

        furthest = self.step.clone()
        dist.all_reduce(furthest, op=dist.ReduceOp.MAX)
        holder = torch.tensor([dist.get_rank() if self.step.item() == furthest.item() else 1 << 30])
        dist.all_reduce(holder, op=dist.ReduceOp.MIN)
        for tensor in (self.parameters, self.momentum, self.step):
            dist.broadcast(tensor, src=int(holder.item()))

    def apply(self, outer_gradient, args: argparse.Namespace) -> None:
        """One outer step: Nesterov-momentum SGD on the averaged outer gradient."""
        self.momentum.mul_(args.outer_momentum).add_(outer_gradient)
        self.parameters.sub_(args.outer_lr * (outer_gradient + args.outer_momentum * self.momentum))
        self.step += 1


def _end_of_outer_step(comm, state: _State, loss, timeout: datetime.timedelta) -> None:
    """Reports progress and admits waiting peers (nothing may be in flight here)."""
    import torch.distributed as dist

    import pycomm.torch

    if dist.get_rank() == 0:
        print(f"step {state.step.item()} peers {dist.get_world_size()} loss {loss.item():.5f}", flush=True)
    if comm.pending_peers():
        comm.update_topology()
        pycomm.torch.reform(timeout)
        state.synchronize()


def _load(model, parameters) -> None:
    """Copies the global parameters into the local model (which must not alias them)."""
    from torch.nn.utils import vector_to_parameters

    vector_to_parameters(parameters.clone(), model.parameters())


def peer(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    import pycomm.torch
    from pycomm import kernels
    from pycomm.errors import CommError

    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    if args.spare:
        # A spare has its interpreter and torch loaded; it joins when the driver says so.
        print("ready", flush=True)
        sys.stdin.readline()
    dist.init_process_group("pycomm", init_method=f"pycomm://{args.master}", timeout=timeout)
    comm = pycomm.torch.communicator()
    model = _model()
    state = _State(model)
    inner = torch.optim.AdamW(model.parameters(), lr=args.inner_lr)
    generator = torch.Generator().manual_seed(os.getpid())
    # With --overlap: the outer all-reduce in flight, its outer gradient, and the local parameters
    # it was taken from.
    pending = None
    loss = torch.zeros(())
    # After a failure the group is re-formed and the state taken from a peer furthest along; a
    # failure during that recovery (another peer gone) only starts it again.
    stale, synchronized = False, False
    while state.step.item() < args.outer_steps:
        try:
            if stale:
                pycomm.torch.reform(timeout)
                stale, synchronized = False, False
            if not synchronized:
                state.synchronize()
                _load(model, state.parameters)
                synchronized = True
            for _ in range(args.inner_steps):
                inputs, targets = _batch(generator)
                loss = torch.nn.functional.mse_loss(model(inputs), targets)
                inner.zero_grad()
                loss.backward()
                inner.step()
            local = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
            if pending is not None:
                # The previous round's all-reduce ran during the inner steps just taken: apply it,
                # and keep this round's progress on top of the new global parameters.
                work, outer_gradient, sent_from = pending
                pending = None
                work.wait()
                state.apply(outer_gradient, args)
                local = local + (state.parameters - sent_from)
                _load(model, local)
                _end_of_outer_step(comm, state, loss, timeout)
                if state.step.item() >= args.outer_steps:
                    break
            outer_gradient = state.parameters - local
            if args.overlap:
                work = dist.all_reduce(outer_gradient, op=dist.ReduceOp.AVG, async_op=True)
                pending = (work, outer_gradient, local.clone())
                continue
            dist.all_reduce(outer_gradient, op=dist.ReduceOp.AVG)
            state.apply(outer_gradient, args)
            _load(model, state.parameters)
            _end_of_outer_step(comm, state, loss, timeout)
        except (dist.DistBackendError, CommError) as error:
            print(f"recovering: {str(error).splitlines()[0][:160]}", flush=True)
            pending, stale = None, True
    _load(model, state.parameters)
    digest = kernels.hash64(state.parameters.numpy())
    print(
        f"final step {state.step.item()} eval_loss {_evaluation_loss(model):.6f} digest {digest:016x}",
        flush=True,
    )
    dist.destroy_process_group()
    comm.close()
    return 0


class _Peer:
    """One peer process of the driver, its output echoed with a prefix and kept."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            print(f"[{self.name}] {line.rstrip()}", flush=True)

    def last_step(self) -> int:
        steps = [int(line.split()[1]) for line in self.lines if line.startswith("step ")]
        return max(steps, default=0)

    def final(self) -> tuple[float, str] | None:
        for line in self.lines:
            if line.startswith("final "):
                fields = line.split()
                return float(fields[4]), fields[6]
        return None

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code


def _wait_until(condition, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired("diloco", 0)
        time.sleep(0.05)


def driver(args: argparse.Namespace) -> int:
    from pycomm.ft import Master

    master = Master()
    command = [sys.executable, os.path.abspath(__file__), "--peer", "--master", master.address]
    for name in _SHARED_OPTIONS:
        value = getattr(args, name)
        flag = f"--{name.replace('_', '-')}"
        command += ([flag] if value else []) if isinstance(value, bool) else [f"{flag}={value}"]
    peers = [_Peer(f"peer{k}", command) for k in range(args.peers)]
    spare = None if args.no_churn else _Peer(f"peer{args.peers}", [*command, "--spare"])
    kills = joins = 0
    deadline = time.monotonic() + args.timeout
    try:
        if spare is not None:
            _wait_until(lambda: "ready" in spare.lines, deadline)
            _wait_until(lambda: max(p.last_step() for p in peers) >= args.outer_steps // 3, deadline)
            victim = peers[-1]
            victim.process.send_signal(signal.SIGKILL)
            kills += 1
            print(f"[driver] killed {victim.name} (pid {victim.process.pid})", flush=True)
            spare.process.stdin.write("go\n")
            spare.process.stdin.flush()
            peers.append(spare)
            joins += 1
            print(f"[driver] {spare.name} joins", flush=True)
        codes = [p.finish(max(1.0, deadline - time.monotonic())) for p in peers]
    except subprocess.TimeoutExpired:
        print("[driver] FAILED: the run did not finish in time", flush=True)
        return 1
    finally:
        for p in peers:
            if p.process.poll() is None:
                p.process.kill()
        master.close()
    finals = [p.final() for p in peers if p.process.returncode == 0]
    failed = [p.name for p, code in zip(peers, codes) if code != 0 and code != -signal.SIGKILL]
    digests = {digest for _, digest in finals}
    loss = finals[0][0] if finals else float("nan")
    print(f"[driver] peers finished {len(finals)}, kills {kills}, joins {joins}, final eval_loss {loss:.6f}")
    if failed or len(digests) != 1 or len(finals) != args.peers:
        print(f"[driver] FAILED: failed peers {failed}, distinct final parameters {len(digests)}", flush=True)
        return 1
    print("[driver] PASSED", flush=True)
    return 0


_SHARED_OPTIONS = ("outer_steps", "inner_steps", "inner_lr", "outer_lr", "outer_momentum", "overlap")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=3, help="peers at the start (default 3)")
    parser.add_argument("--outer-steps", type=int, default=30)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--inner-lr", type=float, default=3e-3)
    parser.add_argument("--outer-lr", type=float, default=0.7)
    parser.add_argument(
        "--outer-momentum",
        type=float,
        help="Nesterov momentum of the outer step (default 0.9; 0.5 with --overlap, whose updates land "
        "a round late)",
    )
    parser.add_argument("--no-churn", action="store_true", help="kill no peer and start none")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="overlap each outer all-reduce with the next round's inner steps (applied one round late)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the whole run may take")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    parser.add_argument("--spare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.outer_momentum is None:
        args.outer_momentum = 0.5 if args.overlap else 0.9
    return peer(args) if args.peer else driver(args)


if __name__ == "__main__":
    sys.exit(main())
