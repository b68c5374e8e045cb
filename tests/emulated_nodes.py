"""Several nodes in one box: network namespaces with their own hostname and address,
joined by veth pairs to a bridge in a head namespace, links shaped with `tc tbf`.

`Cluster(2)` (a context manager) makes nodes `<prefix>n1`, `<prefix>n2` and a head
`<prefix>h`: the namespace, the hostname and the name in every node's hosts file are the
same word. `cluster.run(node, command)` runs a command on a node; `cluster.ssh` is an
`ssh` stand-in for MPI launchers (`mpiexec -launcher ssh -launcher-exec ...`, Open MPI's
`plm_ssh_agent`) that runs the remote command on the named node. The filesystem is shared,
as on a cluster, but for one node-local folder: the path `cluster.here` is, on each node,
that node's own folder `cluster.local(node)` (a private mount), e.g. to show which node
wrote what. Everything made is
removed on exit, also after a failure: the processes in the namespaces, the namespaces
(their links and bridge go with them) and the hosts files. Traffic stays on 10.x
addresses that exist only inside these namespaces.

Used by tests/multinode and benchmarks/bench_nodes.py. Needs root (CAP_NET_ADMIN and
CAP_SYS_ADMIN), `ip`, `tc` and `unshare`; `unavailable()` says why not, for a skip.
"""

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts NETNS_ETC/<name>/hosts
SUBNET = "10.77.0"  # <SUBNET>.<node>/24: private, and only inside the namespaces


def unavailable() -> "str | None":
    """Why emulated nodes cannot be made here, or None."""
    missing = [tool for tool in ("ip", "tc", "unshare") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install iproute2 util-linux)"
    if os.geteuid() != 0:
        return "emulated nodes need root (network namespaces)"
    probe = f"mpinnprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Cluster:
    """`nodes` emulated nodes and a head (see the module's doc); `rate` ("1gbit") shapes
    every node's link."""

    made = 0  # clusters made by this process, for unique names

    def __init__(self, nodes: int, rate: "str | None" = None):
        Cluster.made += 1
        self.prefix = f"mp{os.getpid()}{chr(96 + Cluster.made % 26 or 26)}"  # <= 10 chars
        self.head = f"{self.prefix}h"
        self.nodes = [f"{self.prefix}n{index}" for index in range(1, nodes + 1)]
        self.address = {name: f"{SUBNET}.{index}" for index, name in enumerate(self.nodes, 1)}
        self.address[self.head] = f"{SUBNET}.254"
        self.rate = rate
        self.folder = Path(tempfile.mkdtemp(prefix="mpinn-nodes-"))
        self.ssh = self.folder / "ssh"
        self.here = self.folder / "here"

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> "Cluster":
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _make(self) -> None:
        for name in [self.head, *self.nodes]:
            _ip("netns", "add", name)
            self.ip(name, "link", "set", "lo", "up")
            hosts = NETNS_ETC / name / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text("127.0.0.1 localhost\n" + "".join(
                f"{address} {host}\n" for host, address in self.address.items()))
        self.ip(self.head, "link", "add", "br0", "type", "bridge")
        self.ip(self.head, "link", "set", "br0", "up")
        self.ip(self.head, "addr", "add", f"{self.address[self.head]}/24", "dev", "br0")
        for index, name in enumerate(self.nodes, 1):
            peer = f"{self.prefix}v{index}"
            _ip("link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", peer, "netns", self.head)
            self.ip(self.head, "link", "set", peer, "master", "br0")
            self.ip(self.head, "link", "set", peer, "up")
            self.ip(name, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            self.ip(name, "link", "set", "eth0", "up")
        if self.rate:
            self.shape(self.rate)
        for name in [self.head, *self.nodes]:
            self.local(name).mkdir(parents=True)
        self.here.mkdir()
        self.ssh.write_text(SSH_SCRIPT.replace("ARRIVE", self._arrive()))
        self.ssh.chmod(self.ssh.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def remove(self) -> None:
        """Kill what runs in the namespaces, then remove them and their hosts files."""
        for name in [self.head, *self.nodes]:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.05 if any(self._exists(name) for name in self.nodes) else 0)
        for name in [self.head, *self.nodes]:
            if self._exists(name):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _exists(name: str) -> bool:
        return (Path("/run/netns") / name).exists()

    # ------------------------------------------------------------------ use
    def ip(self, namespace: str, *arguments: str) -> None:
        _ip("-n", namespace, *arguments)

    def shape(self, rate: "str | None") -> None:
        """Every node's outgoing link at `rate` (e.g. "1gbit"), or unshaped with None; a
        message between two nodes crosses one shaped link."""
        for name in self.nodes:
            subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "del", "dev", "eth0",
                            "root"], capture_output=True)
            if rate:
                burst = max(_bits(rate) // 8 // 250, 64 * 1024)  # 4 ms at the rate
                subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev",
                                "eth0", "root", "tbf", "rate", rate, "burst", str(burst),
                                "latency", "100ms"], check=True, capture_output=True)
        self.rate = rate

    def local(self, node: str) -> Path:
        """The folder that `node` sees at `self.here`."""
        return self.folder / "local" / node

    def command(self, node: str, arguments: list[str]) -> list[str]:
        """`arguments` as run on `node`: in its namespace, under its own hostname, with its
        own folder at `self.here`."""
        return ["ip", "netns", "exec", node, "unshare", "--uts", "--mount", "--propagation",
                "private", "sh", "-c", f'{self._arrive()} && exec "$@"', node, *arguments]

    def _arrive(self) -> str:
        """Shell commands that make the node named by $0 what a process on it sees."""
        return f'hostname "$0" && mount --bind "{self.folder}/local/$0" "{self.here}"'

    def run(self, node: str, arguments: list[str], **options) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(node, arguments), **options)

    def popen(self, node: str, arguments: list[str], **options) -> subprocess.Popen:
        return subprocess.Popen(self.command(node, arguments), **options)


# An ssh for MPI launchers: options dropped, then `HOST COMMAND...`; the command runs on
# HOST (its namespace and hostname) through a shell, as sshd would run it.
SSH_SCRIPT = r"""#!/bin/sh
while [ $# -gt 0 ]; do
    case "$1" in
        -o|-p|-l|-i|-F|-E|-b|-c|-e|-m|-J|-L|-R|-D|-W|-w) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host="$1"; shift
exec ip netns exec "$host" unshare --uts --mount --propagation private \
    sh -c 'ARRIVE && exec sh -c "$1"' "$host" "$*"
"""


def _ip(*arguments: str) -> None:
    done = subprocess.run(["ip", *arguments], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(arguments)}: {done.stderr.strip()}")


def _bits(rate: str) -> int:
    units = {"kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
    for unit, factor in units.items():
        if rate.endswith(unit):
            return int(float(rate[: -len(unit)]) * factor)
    return int(rate)
