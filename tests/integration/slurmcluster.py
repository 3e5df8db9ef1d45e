"""A real single-node Slurm cluster for one test: munged, slurmctld and slurmd from Debian's
packages, run in the foreground as this process's children (they die with it), on 127.0.0.1,
on free ports, with every file (key, config, state, spool, logs) in a folder the test owns.
proctrack/linuxproc and task/none: no cgroups, which a container often does not delegate.

    with SlurmCluster(tmp) as cl:        # raises Unavailable(reason) when it cannot start
        env = cl.env(os.environ)         # SLURM_CONF for sbatch, squeue, scontrol, scancel
        ...

Nothing here is ckptscope-specific.
"""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


class Unavailable(Exception):
    """The cluster cannot run here (why: missing packages, not root, a daemon that did not start)."""


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: a killed test leaves no daemon behind
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class SlurmCluster:
    def __init__(self, root, cpus=None, start_timeout=30):
        self.root = os.path.abspath(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.start_timeout = start_timeout
        self.procs = {}
        self.conf = os.path.join(self.root, "slurm.conf")

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        missing = [p for p in DAEMONS + CLIENTS if not shutil.which(p) and not os.path.exists("/usr/sbin/" + p)]
        if missing:
            raise Unavailable("not installed: %s (Debian packages munge, slurmctld, slurmd, slurm-client; "
                              "scripts/deps.sh installs them)" % ", ".join(missing))
        if os.geteuid() != 0:
            raise Unavailable("slurmd starts jobs as their users, which needs root")
        for d in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        os.chmod(os.path.join(self.root, "munge"), 0o700)
        key = os.path.join(self.root, "munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        self.socket = os.path.join(self.root, "munge", "munge.sock")
        self._spawn("munged", ["munged", "-F", "--force", "--key-file=" + key, "--socket=" + self.socket,
                               "--pid-file=" + os.path.join(self.root, "munge", "munged.pid"),
                               "--seed-file=" + os.path.join(self.root, "munge", "munged.seed"),
                               "--log-file=" + os.path.join(self.root, "log", "munged.log")])
        self._wait(lambda: os.path.exists(self.socket), "munged did not create its socket", "munged")
        self.host = socket.gethostname().split(".")[0]
        self._write_conf()
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", self.conf])
        self._spawn("slurmd", ["slurmd", "-D", "-N", "node1", "-f", self.conf])
        self._wait(self._node_idle, "the node did not come up idle", "slurmd")

    def stop(self):
        """Cancel what is still queued, then stop the daemons (SIGTERM, SIGKILL after 5 s)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--quiet", "--user=root"], env=self.env(os.environ),
                           capture_output=True, timeout=20)
            deadline = time.time() + 15
            while time.time() < deadline and self.queue():
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    # -- use --------------------------------------------------------------------------
    def env(self, base):
        e = dict(base)
        e["SLURM_CONF"] = self.conf
        return e

    def run(self, *args, env=None, timeout=60):
        return subprocess.run(list(args), env=self.env(env or os.environ), capture_output=True, text=True,
                              timeout=timeout)

    def queue(self):
        """Job ids (as squeue prints them) still pending or running."""
        p = self.run("squeue", "-h", "-o", "%i")
        return p.stdout.split() if p.returncode == 0 else []

    def wait_jobs(self, job_ids, timeout=300):
        """Wait until none of job_ids (array ids included) is pending or running."""
        job_ids = [str(j) for j in job_ids]
        deadline = time.time() + timeout
        while time.time() < deadline:
            q = self.queue()
            if not any(x == j or x.startswith(j + "_") for x in q for j in job_ids):
                return True
            time.sleep(0.3)
        return False

    def job_states(self, job_id):
        """{job or task id: (state, exit code)} from scontrol (finished jobs stay for MinJobAge)."""
        p = self.run("scontrol", "-o", "show", "job", str(job_id))
        out = {}
        for line in p.stdout.splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            tid = f.get("ArrayTaskId")
            key = "%s_%s" % (f.get("ArrayJobId"), tid) if tid and f.get("ArrayJobId") else f.get("JobId")
            out[key] = (f.get("JobState"), f.get("ExitCode"))
        return out

    def logs(self):
        return "\n".join("== %s\n%s" % (n, _tail(os.path.join(self.root, "log", n)))
                         for n in ("munged.log", "slurmctld.log", "slurmd.log"))

    # -- internals --------------------------------------------------------------------
    def _spawn(self, name, argv):
        out = open(os.path.join(self.root, "log", name + ".out"), "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent, close_fds=True)
        out.close()

    def _wait(self, ready, what, daemon):
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if ready():
                return
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise Unavailable("%s exited with status %s: %s" % (
                        name, p.returncode, _tail(os.path.join(self.root, "log", name + ".out"), 8).strip()))
            time.sleep(0.2)
        raise Unavailable("%s within %d s: %s" % (what, self.start_timeout,
                                                  _tail(os.path.join(self.root, "log", daemon + ".out"), 8).strip()))

    def _node_idle(self):
        p = self.run("sinfo", "-h", "-N", "-o", "%t")
        return p.returncode == 0 and p.stdout.strip() == "idle"

    def _write_conf(self):
        r = self.root
        conf = f"""# written by tests/integration/slurmcluster.py for one test run
ClusterName=ckstest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/state/slurmctld.pid
SlurmdPidFile={r}/spool/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=2
Waittime=0
SlurmctldDebug=info
SlurmdDebug=info
NodeName=node1 NodeAddr=127.0.0.1 NodeHostname={self.host} CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=node1 Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)
