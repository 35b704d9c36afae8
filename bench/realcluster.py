"""Real OpenSearch and Elasticsearch clusters, from the official integ-test zips on Maven Central.

    python bench/realcluster.py start --flavor opensearch|elasticsearch [--version V] [--nodes 3]
                                      [--search-threads N] [--search-queue N] [--heap 512m]
    python bench/realcluster.py stop-node  --flavor F --node I     # kill -9 one node of the running cluster
    python bench/realcluster.py start-node --flavor F --node I     # bring it back, wait until it rejoined
    python bench/realcluster.py fetch --flavor F [--version V]     # download and unpack only

`start` prints one JSON line once the cluster is green (flavor, version, node URLs, the PID of
each node, the state file) and runs until SIGTERM/SIGINT, then stops every node it started.

Importable: `RealCluster(flavor, nodes=3, ...)` with `start()`, `urls`, `stop_node(i)`,
`start_node(i)` and `stop()`; the test fixtures and the benches use it.

How a node runs (the choices, and why):
- **The integ-test zips**, fetched once per version with `mvn dependency:get` and cached under
  `~/.cache/sluicegate/`. They bring no JDK and few modules. OpenSearch's has only
  transport-netty4, so the modules the tests and benches need (painless, reindex, mapper-extras,
  parent-join, analysis-common, lang-mustache, aggs-matrix-stats) are added from their Maven jars,
  each with a plugin descriptor, exactly as the full distribution lays them out. Elasticsearch's
  has transport-netty4, x-pack-core, x-pack-security and apm; its painless, reindex and async
  search modules are not published to Maven Central, so scripts, `_delete_by_query` and async
  search do not exist on these Elasticsearch nodes (the tests say so where it matters).
- **Each node is its own process group** (the kill -9 of a node-loss test takes the whole node),
  started as the unprivileged user `sluicegate` when run as root (both servers refuse root).
  The unpacked installation is read-only and shared; each node has its own config, data and log
  directories under the cluster's run directory.
- **Small and quiet**: heap 512 MiB, security off (a test may turn it on with `settings`), disk
  thresholds off, bound to 127.0.0.1 only (development mode: no production bootstrap checks).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("SLUICEGATE_CACHE", Path.home() / ".cache" / "sluicegate"))
#: the user nodes run as when this runs as root (Elasticsearch and OpenSearch refuse root)
NODE_USER = os.environ.get("SLUICEGATE_NODE_USER", "sluicegate")


@dataclass(frozen=True)
class Module:
    """A module added to a distribution from its Maven jar: the artifact and its plugin class."""

    artifact: str
    name: str
    classname: str
    extended: str = ""
    policy: str = ""


_PAINLESS_POLICY = """grant {
  // needed to generate runtime classes
  permission java.lang.RuntimePermission "createClassLoader";
  // needed to find the classloader to load allowlisted classes from
  permission java.lang.RuntimePermission "getClassLoader";
};
"""
_REINDEX_POLICY = """grant {
  // reindex from a remote cluster opens connections through the REST client
  permission java.net.SocketPermission "*", "connect";
};
"""
_MUSTACHE_POLICY = """grant {
  // mustache reflects over the template's scope
  permission java.lang.RuntimePermission "accessDeclaredMembers";
  permission java.lang.reflect.ReflectPermission "suppressAccessChecks";
};
"""

OPENSEARCH_MODULES = (
    Module("org.opensearch.plugin:lang-painless", "lang-painless", "org.opensearch.painless.PainlessPlugin",
           policy=_PAINLESS_POLICY),
    Module("org.opensearch.plugin:reindex-client", "reindex", "org.opensearch.index.reindex.ReindexPlugin",
           policy=_REINDEX_POLICY),
    Module("org.opensearch.plugin:analysis-common", "analysis-common",
           "org.opensearch.analysis.common.CommonAnalysisPlugin", extended="lang-painless"),
    Module("org.opensearch.plugin:mapper-extras-client", "mapper-extras", "org.opensearch.index.mapper.MapperExtrasPlugin"),
    Module("org.opensearch.plugin:parent-join-client", "parent-join", "org.opensearch.join.ParentJoinPlugin"),
    Module("org.opensearch.plugin:lang-mustache-client", "lang-mustache", "org.opensearch.script.mustache.MustachePlugin",
           policy=_MUSTACHE_POLICY),
    Module("org.opensearch.plugin:aggs-matrix-stats-client", "aggs-matrix-stats",
           "org.opensearch.search.aggregations.matrix.MatrixAggregationPlugin"),
)


@dataclass(frozen=True)
class Flavor:
    """What differs between OpenSearch and Elasticsearch for starting a node."""

    name: str
    group: str
    default_version: str
    java_versions: tuple[int, ...]  # supported majors, preferred first
    java_home_env: str
    java_opts_env: str
    path_conf_env: str
    config_file: str
    initial_masters_key: str
    modules: tuple[Module, ...] = ()
    settings: dict = field(default_factory=dict)

    @property
    def binary(self) -> str:
        return f"bin/{self.name}"


FLAVORS = {
    "opensearch": Flavor(
        name="opensearch",
        group="org.opensearch.distribution.integ-test-zip",
        default_version="2.19.6",  # the newest 2.19.x on Maven Central; 2.x runs on Java 17
        java_versions=(17, 21, 11),
        java_home_env="OPENSEARCH_JAVA_HOME",
        java_opts_env="OPENSEARCH_JAVA_OPTS",
        path_conf_env="OPENSEARCH_PATH_CONF",
        config_file="opensearch.yml",
        initial_masters_key="cluster.initial_cluster_manager_nodes",
        modules=OPENSEARCH_MODULES,
    ),
    "elasticsearch": Flavor(
        name="elasticsearch",
        group="org.elasticsearch.distribution.integ-test-zip",
        default_version="8.19.21",  # the newest integ-test zip on Maven Central (no 9.x is published there)
        java_versions=(17, 21, 25),
        java_home_env="ES_JAVA_HOME",
        java_opts_env="ES_JAVA_OPTS",
        path_conf_env="ES_PATH_CONF",
        config_file="elasticsearch.yml",
        initial_masters_key="cluster.initial_master_nodes",
        settings={"xpack.security.enabled": False},
    ),
}


class ClusterError(RuntimeError):
    """A distribution could not be fetched, or a node would not start or join."""


class PortTaken(ClusterError):
    """A node lost the race for one of its ports to another process."""

    def __init__(self, node: NodeProcess, message: str):
        super().__init__(message)
        self.node = node


# ---------------------------------------------------------------------------------------------
# Fetching: Maven Central → ~/.cache/sluicegate (once per version)
# ---------------------------------------------------------------------------------------------

def _m2_path(group: str, artifact: str, version: str, ext: str) -> Path:
    m2 = Path(os.environ.get("MAVEN_REPO", Path.home() / ".m2" / "repository"))
    return m2 / group.replace(".", "/") / artifact / version / f"{artifact}-{version}.{ext}"


def _mvn(*args: str, cwd: Path | None = None) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ClusterError("Maven is not installed (`make test` installs it: apt-get install maven)")
    result = subprocess.run([mvn, "-q", "-B", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"mvn {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")


def install_root() -> Path:
    """Where unpacked distributions live: the cache, unless the nodes run as another user who could
    not read it (root's home is private); then a world-readable directory of its own."""
    if os.geteuid() == 0:
        return Path(os.environ.get("SLUICEGATE_INSTALL_DIR", "/var/tmp/sluicegate/dist"))
    return CACHE / "dist"


def fetch(flavor: str, version: str | None = None) -> Path:
    """The unpacked distribution's home for `flavor` at `version`, fetched and unpacked once."""
    spec = FLAVORS[flavor]
    version = version or spec.default_version
    home = install_root() / f"{flavor}-{version}"
    if (home / ".complete").exists():
        return home
    zip_cache = CACHE / "downloads" / f"{flavor}-{version}.zip"
    if not zip_cache.exists():
        _mvn("dependency:get", f"-Dartifact={spec.group}:{flavor}:{version}:zip", "-Dtransitive=false")
        zip_cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_m2_path(spec.group, flavor, version, "zip"), zip_cache)
    staging = Path(tempfile.mkdtemp(prefix=f".{flavor}-{version}-", dir=_mkdir(home.parent)))
    try:
        with zipfile.ZipFile(zip_cache) as archive:
            archive.extractall(staging)
            for info in archive.infolist():  # zipfile drops the mode bits; bin/ scripts need theirs
                mode = info.external_attr >> 16
                if mode:
                    os.chmod(staging / info.filename, mode & 0o7777 | 0o444)
        top = staging / f"{flavor}-{version}"
        for module in spec.modules:
            _add_module(top, module, version)
        _world_readable(top)
        if home.exists():
            shutil.rmtree(home)
        os.replace(top, home)
        (home / ".complete").write_text(version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _add_module(home: Path, module: Module, version: str) -> None:
    """Lay out `module` under modules/ from its Maven jar and runtime dependencies, minus what lib/ has."""
    target = home / "modules" / module.name
    if target.exists():
        return
    jars = CACHE / "modules" / f"{home.name}" / module.name
    if not (jars / ".complete").exists():
        group, artifact = module.artifact.split(":")
        work = Path(tempfile.mkdtemp(prefix="sg-mvn-"))
        try:
            (work / "pom.xml").write_text(
                '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
                "<groupId>sluicegate</groupId><artifactId>module</artifactId><version>1</version><dependencies>"
                f"<dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>"
                "</dependency></dependencies></project>"
            )
            if jars.exists():
                shutil.rmtree(jars)
            _mvn("dependency:copy-dependencies", f"-DoutputDirectory={jars}", "-DincludeScope=runtime", cwd=work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (jars / ".complete").write_text(version)
    in_lib = {p.name for p in (home / "lib").glob("*.jar")}
    target.mkdir(parents=True)
    for jar in jars.glob("*.jar"):
        if jar.name not in in_lib:
            shutil.copyfile(jar, target / jar.name)
    java = next(v for v in FLAVORS["opensearch"].java_versions if v <= 17)
    (target / "plugin-descriptor.properties").write_text(
        f"description=The {module.name} module, added from Maven Central by sluicegate's bench/realcluster.py\n"
        f"version={version}\nname={module.name}\nclassname={module.classname}\n"
        f"java.version={java}\nopensearch.version={version}\nextended.plugins={module.extended}\n"
        "has.native.controller=false\n"
    )
    if module.policy:
        (target / "plugin-security.policy").write_text(module.policy)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for part in [path, *path.parents]:
            if str(part).startswith("/var/tmp/sluicegate"):
                os.chmod(part, 0o755)
    return path


def _world_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath) / name
            os.chmod(path, os.stat(path).st_mode | 0o444)


def java_home(flavor: str) -> Path:
    """A JDK for `flavor`: its *_JAVA_HOME variable if set, else the first supported one under /usr/lib/jvm."""
    spec = FLAVORS[flavor]
    explicit = os.environ.get(spec.java_home_env)
    if explicit:
        return Path(explicit)
    found: dict[int, Path] = {}
    for candidate in sorted(Path("/usr/lib/jvm").glob("*")):
        release = candidate / "release"
        if candidate.is_symlink() or not release.exists() or not (candidate / "bin" / "java").exists():
            continue
        for line in release.read_text(errors="replace").splitlines():
            if line.startswith("JAVA_VERSION="):
                major = int(line.split("=", 1)[1].strip('"').split(".")[0])
                found.setdefault(major, candidate)
    for major in spec.java_versions:
        if major in found:
            return found[major]
    raise ClusterError(
        f"no JDK for {flavor} (needs Java {' or '.join(map(str, spec.java_versions))}) under /usr/lib/jvm; "
        f"set {spec.java_home_env} or install default-jdk-headless (`make test` does)"
    )


# ---------------------------------------------------------------------------------------------
# Running: N nodes, each its own process group
# ---------------------------------------------------------------------------------------------

#: node ports come from below the kernel's ephemeral range (32768 and up): a port picked there is not taken
#: again by an outgoing connection, or by another test's server on "port 0", in the seconds a JVM takes to bind it
NODE_PORTS = range(20000, 32000)


def free_port() -> int:
    """A free loopback port for a node, outside the ephemeral range (see NODE_PORTS)."""
    rng = random.Random()
    while True:
        port = rng.choice(NODE_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def http_json(
    url: str, method: str = "GET", body: dict | None = None, timeout: float = 10.0, *,
    context: ssl.SSLContext | None = None, authorization: str | None = None,
) -> tuple[int, dict]:
    """One request to a node; (status, decoded JSON object or {}). Status 0: no answer.
    `context` verifies an https node (and may carry a client certificate); `authorization` is sent as is."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError, ValueError):
        return 0, {}


@dataclass
class NodeProcess:
    """One node: its ports, directories and the process group it runs as."""

    index: int
    name: str
    http_port: int
    transport_port: int
    directory: Path
    pid: int | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"


class RealCluster:
    """N real nodes of one flavor on free loopback ports, as one cluster.

    `settings` are added to every node's config file (e.g. TLS and security for a test that needs
    them); `config_files` maps a file name to its bytes, written into each node's config directory;
    `cpus` pins every node to those CPUs (`taskset -c`), for benches that keep the cluster off the
    load generator's core. `data_dir` keeps the cluster's data between runs (the corpus, say): the
    same directory with the same node count comes back as the same cluster.

    A secured cluster: `settings` turn security and HTTP TLS on (the node URLs are then https when
    `xpack.security.http.ssl.enabled` or `plugins.security.ssl.http.enabled` is true), `keystore`
    holds secure settings such as `bootstrap.password` (written with the distribution's own
    `elasticsearch-keystore`, as the node user), and `client_context` / `authorization` are how this
    class's own health checks reach such a node.
    """

    def __init__(
        self,
        flavor: str = "opensearch",
        *,
        version: str | None = None,
        nodes: int = 3,
        heap: str = "512m",
        search_threads: int | None = None,
        search_queue: int | None = None,
        settings: dict | None = None,
        config_files: dict[str, bytes] | None = None,
        cpus: str | None = None,
        data_dir: str | Path | None = None,
        name: str | None = None,
        keystore: dict[str, str] | None = None,
        client_context: ssl.SSLContext | None = None,
        authorization: str | None = None,
    ):
        if flavor not in FLAVORS:
            raise ClusterError(f"unknown flavor {flavor!r}: opensearch or elasticsearch")
        self.flavor = flavor
        self.spec = FLAVORS[flavor]
        self.version = version or self.spec.default_version
        self.heap = heap
        self.search_threads = search_threads
        self.search_queue = search_queue
        self.settings = settings or {}
        self.config_files = dict(config_files or {})
        self.keystore = keystore or {}
        self.client_context = client_context
        self.authorization = authorization
        self.scheme = "https" if any(self.settings.get(key) in (True, "true") for key in (
            "xpack.security.http.ssl.enabled", "plugins.security.ssl.http.enabled")) else "http"
        self.cpus = cpus
        self.keep = data_dir is not None
        self.name = name or f"sg-{flavor}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self.run_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=_mkdir(_run_root())))
        self.home: Path | None = None
        self.java: Path | None = None
        self.nodes: list[NodeProcess] = self._layout(nodes)

    # ---- public API ----
    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def state_file(self) -> Path:
        return self.run_dir / "cluster.json"

    def info(self) -> dict:
        """The JSON line `start` prints."""
        return {
            "flavor": self.flavor,
            "version": self.version,
            "nodes": self.urls,
            "pids": [node.pid for node in self.nodes],
            "java": str(self.java),
            "state": str(self.state_file),
        }

    def start(self, timeout: float = 180.0) -> RealCluster:
        """Fetch if needed, start every node, and wait until the cluster is green with all of them."""
        self.home = fetch(self.flavor, self.version)
        self.java = java_home(self.flavor)
        if self.keystore and "elasticsearch.keystore" not in self.config_files:
            self.config_files["elasticsearch.keystore"] = make_keystore(self.home, self.java, self.keystore)
        try:
            for node in self.nodes:
                self._spawn(node)
            deadline = time.monotonic() + timeout
            for attempt in range(3):
                try:
                    self.wait_green(len(self.nodes), max(1.0, deadline - time.monotonic()))
                    break
                except PortTaken as taken:  # lost a race for a port: that node again, on new ports
                    if attempt == 2 or self.keep:
                        raise
                    node = taken.node
                    node.http_port, node.transport_port = self._new_ports()
                    self._spawn(node)
        except BaseException:
            self.stop()
            raise
        self._save()
        return self

    def stop_node(self, index: int) -> None:
        """kill -9 the node's whole process group: the node is gone, as a crashed machine's would be."""
        node = self.nodes[index]
        if node.pid is not None:
            _kill_group(node.pid, signal.SIGKILL)
            _reap(node.pid, 10.0)
            node.pid = None
        self._save()

    def start_node(self, index: int, timeout: float = 180.0, status: str = "green") -> None:
        """Start a stopped node again on its ports and data, and wait until the cluster has every node
        and is `status` ("yellow": rejoined, its shard copies may still be recovering)."""
        node = self.nodes[index]
        if node.pid is not None and _alive(node.pid):
            return
        self._spawn(node)
        self._save()
        self.wait_green(len(self.nodes), timeout, via=node, status=status)

    def suspend_node(self, index: int) -> None:
        """SIGSTOP the node: it keeps its sockets but answers nothing (a hung node)."""
        node = self.nodes[index]
        if node.pid is not None:
            _kill_group(node.pid, signal.SIGSTOP)

    def resume_node(self, index: int) -> None:
        node = self.nodes[index]
        if node.pid is not None:
            _kill_group(node.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop every node (gracefully, then kill -9 after 20 s) and remove the run directory unless kept."""
        self._reload_pids()
        live = [node for node in self.nodes if node.pid is not None]
        for node in live:
            _kill_group(node.pid, signal.SIGCONT)  # a suspended node cannot act on SIGTERM
            _kill_group(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        for node in live:
            if not _reap(node.pid, max(0.1, deadline - time.monotonic())):
                _kill_group(node.pid, signal.SIGKILL)
                _reap(node.pid, 10.0)
            node.pid = None
        if self.keep:
            self._save()
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def health(self, via: NodeProcess | None = None, **params: str) -> dict:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        status, body = http_json(f"{(via or self._any_live()).url}/_cluster/health?{query}", timeout=30,
                                 context=self.client_context, authorization=self.authorization)
        return body if status == 200 else {}

    def wait_green(self, nodes: int, timeout: float, via: NodeProcess | None = None, status: str = "green") -> None:
        """Wait until `nodes` nodes have joined and the cluster is `status` (green: every shard assigned)."""
        want = status
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.pid is not None and not _alive(node.pid):
                    tail = self._log_tail(node)
                    if "Address already in use" in tail:
                        raise PortTaken(node, f"{node.name} could not bind its ports:\n{tail}")
                    raise ClusterError(f"{node.name} exited while starting:\n{tail}")
            target = via or self._any_live()
            code, body = http_json(
                f"{target.url}/_cluster/health?wait_for_status={want}&wait_for_nodes={nodes}&timeout=2s", timeout=10,
                context=self.client_context, authorization=self.authorization,
            )
            if code == 200 and not body.get("timed_out") and body.get("number_of_nodes") == nodes:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.name}:\n{self._log_tail(n)}" for n in self.nodes)
                raise ClusterError(f"{self.flavor} cluster not {want} with {nodes} nodes after {timeout:.0f}s: {body}\n{tails}")
            time.sleep(0.5)

    # ---- internals ----
    def _layout(self, count: int) -> list[NodeProcess]:
        state = self.state_file
        if self.keep and state.exists():  # a kept cluster comes back on its old ports (its data names them)
            saved = json.loads(state.read_text())
            if len(saved["nodes"]) == count and saved.get("flavor") == self.flavor:
                self.name = saved["name"]
                return [NodeProcess(i, n["name"], n["http_port"], n["transport_port"], Path(n["directory"]),
                                    scheme=self.scheme) for i, n in enumerate(saved["nodes"])]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        nodes: list[NodeProcess] = []
        self.nodes = nodes
        for i in range(count):
            nodes.append(NodeProcess(i, f"node-{i}", *self._new_ports(), self.run_dir / f"node-{i}", scheme=self.scheme))
        return nodes

    def _new_ports(self) -> tuple[int, int]:
        """An HTTP and a transport port no other node of this cluster has."""
        taken = {port for node in getattr(self, "nodes", []) for port in (node.http_port, node.transport_port)}
        ports: list[int] = []
        while len(ports) < 2:
            port = free_port()
            if port not in taken and port not in ports:
                ports.append(port)
        return ports[0], ports[1]

    def _node_config(self, node: NodeProcess) -> dict:
        spec = self.spec
        config: dict = {
            "cluster.name": self.name,
            "node.name": node.name,
            "network.host": "127.0.0.1",
            "http.port": node.http_port,
            "transport.port": node.transport_port,
            "path.data": str(node.directory / "data"),
            "path.logs": str(node.directory / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": False,
            "action.destructive_requires_name": False,
        }
        if len(self.nodes) == 1:
            config["discovery.type"] = "single-node"
        else:
            config["discovery.seed_hosts"] = [f"127.0.0.1:{n.transport_port}" for n in self.nodes]
            config[spec.initial_masters_key] = [n.name for n in self.nodes]
        if self.search_threads is not None:
            config["thread_pool.search.size"] = self.search_threads
        if self.search_queue is not None:
            config["thread_pool.search.queue_size"] = self.search_queue
        config.update(spec.settings)
        config.update(self.settings)
        return config

    def _spawn(self, node: NodeProcess) -> None:
        assert self.home is not None and self.java is not None
        conf = node.directory / "config"
        for sub in ("data", "logs", "config", "tmp"):
            (node.directory / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.home / "config", conf, dirs_exist_ok=True)
        # The stock jvm.options name paths relative to the installation, which the node may not write to.
        options = (conf / "jvm.options").read_text()
        logs = node.directory / "logs"
        options = options.replace("file=logs/gc.log", f"file={logs}/gc.log").replace("ErrorFile=logs/", f"ErrorFile={logs}/")
        options = options.replace("HeapDumpPath=data", f"HeapDumpPath={node.directory / 'data'}")
        (conf / "jvm.options").write_text(options)
        (conf / self.spec.config_file).write_text(
            "\n".join(f"{key}: {json.dumps(value)}" for key, value in self._node_config(node).items()) + "\n"
        )
        for name, data in self.config_files.items():
            (conf / name).write_bytes(data)
        user = _node_user()
        if user is not None:
            # Only this node's directory: the other nodes are live and their segment files come and go under a walk.
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(node.directory)], check=True)
            os.chown(self.run_dir, user.pw_uid, user.pw_gid)
            os.chmod(self.run_dir, 0o755)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(node.directory),
            "LANG": "C.UTF-8",
            self.spec.java_home_env: str(self.java),
            self.spec.java_opts_env: f"-Xms{self.heap} -Xmx{self.heap} -XX:-HeapDumpOnOutOfMemoryError",
            self.spec.path_conf_env: str(conf),
            "OPENSEARCH_TMPDIR" if self.flavor == "opensearch" else "ES_TMPDIR": str(node.directory / "tmp"),
        }
        command = [str(self.home / self.spec.binary)]
        if self.cpus:
            command = ["taskset", "-c", self.cpus, *command]
        with open(node.directory / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                command, cwd=node.directory, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill -9 takes the launcher and the JVM
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        node.pid = proc.pid

    def _any_live(self) -> NodeProcess:
        for node in self.nodes:
            if node.pid is not None and _alive(node.pid):
                return node
        return self.nodes[0]

    def _log_tail(self, node: NodeProcess, lines: int = 30) -> str:
        text = ""
        for path in (node.directory / "stdout.log", node.directory / "logs" / f"{self.name}.log"):
            if path.exists():
                text += "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        return text

    def _save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "flavor": self.flavor, "version": self.version, "name": self.name, "heap": self.heap,
            "search_threads": self.search_threads, "search_queue": self.search_queue,
            "settings": self.settings, "cpus": self.cpus, "keep": self.keep,
            "nodes": [{"name": n.name, "http_port": n.http_port, "transport_port": n.transport_port,
                       "directory": str(n.directory), "pid": n.pid} for n in self.nodes],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def _reload_pids(self) -> None:
        """Pick up pids another process changed (`start-node` from the command line)."""
        if self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            for node, entry in zip(self.nodes, saved["nodes"]):
                node.pid = entry.get("pid")

    @classmethod
    def attach(cls, state_file: str | Path) -> RealCluster:
        """The cluster a `start` command (another process) is running, from its state file."""
        saved = json.loads(Path(state_file).read_text())
        cluster = cls.__new__(cls)
        cluster.flavor = saved["flavor"]
        cluster.spec = FLAVORS[cluster.flavor]
        cluster.version = saved["version"]
        cluster.heap = saved["heap"]
        cluster.search_threads = saved["search_threads"]
        cluster.search_queue = saved["search_queue"]
        cluster.settings = saved.get("settings") or {}
        cluster.config_files = {}
        cluster.keystore = {}
        cluster.client_context = None
        cluster.authorization = None
        cluster.scheme = "http"
        cluster.cpus = saved.get("cpus")
        cluster.keep = True  # the starting process owns the run directory
        cluster.name = saved["name"]
        cluster.run_dir = Path(state_file).parent
        cluster.home = fetch(cluster.flavor, cluster.version)
        cluster.java = java_home(cluster.flavor)
        cluster.nodes = [NodeProcess(i, n["name"], n["http_port"], n["transport_port"], Path(n["directory"]), n["pid"])
                         for i, n in enumerate(saved["nodes"])]
        return cluster


def es_tools(home: Path, java: Path, steps: list[tuple[str, list[str], str]], keep: tuple[str, ...],
             config_files: dict[str, bytes] | None = None) -> tuple[dict[str, bytes], list[str]]:
    """Run the distribution's own config tools (`elasticsearch-keystore`, `elasticsearch-users`,
    `elasticsearch-service-tokens`: each step is (tool, arguments, stdin)) in a scratch config directory,
    as the node user, like the node itself. Returns the bytes of the files in `keep` they wrote there
    (to hand to RealCluster's `config_files`) and each step's stdout."""
    user = _node_user()
    work = Path(tempfile.mkdtemp(prefix="sg-es-tools-", dir=_mkdir(_run_root())))
    try:
        conf = work / "config"
        shutil.copytree(home / "config", conf)
        for name, data in (config_files or {}).items():
            (conf / name).write_bytes(data)
        if user is not None:
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(work)], check=True)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8",
               "ES_JAVA_HOME": str(java), "ES_PATH_CONF": str(conf)}
        outputs = []
        for tool, args, stdin in steps:
            done = subprocess.run([str(home / "bin" / tool), *args], input=stdin, env=env, cwd=work, capture_output=True,
                                  text=True, user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                                  extra_groups=[] if user else None, timeout=120)
            if done.returncode != 0:
                raise ClusterError(f"{tool} {' '.join(args[:1])} failed: {done.stdout}{done.stderr}")
            outputs.append(done.stdout)
        return {name: (conf / name).read_bytes() for name in keep}, outputs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_keystore(home: Path, java: Path, entries: dict[str, str]) -> bytes:
    """An `elasticsearch.keystore` holding `entries` (secure settings such as `bootstrap.password`)."""
    steps = [("elasticsearch-keystore", ["create"], "")]
    steps += [("elasticsearch-keystore", ["add", "--stdin", "--force", key], value) for key, value in entries.items()]
    return es_tools(home, java, steps, ("elasticsearch.keystore",))[0]["elasticsearch.keystore"]


def _run_root() -> Path:
    return Path(os.environ.get("SLUICEGATE_RUN_DIR", "/var/tmp/sluicegate/run" if os.geteuid() == 0 else CACHE / "run"))


def _node_user() -> pwd.struct_passwd | None:
    """The user nodes run as: `sluicegate` (created if missing) when this runs as root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(NODE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NODE_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(NODE_USER)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:  # not our child (started by another process): ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie that is not ours still answers kill(0); its state says otherwise
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int, timeout: float) -> bool:
    """Wait until the process group leader `pid` and its group are gone; True if they went in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid) and not _group_alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid) and not _group_alive(pid)


def _group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` runs (zombies waiting for a parent to reap them do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, ...
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _reap_children() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _latest(flavor: str) -> Path:
    return _run_root() / f"{flavor}.latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Real OpenSearch / Elasticsearch clusters from Maven Central.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a cluster, print its JSON line when green, run until SIGTERM")
    start.add_argument("--flavor", choices=sorted(FLAVORS), required=True, help="which server")
    start.add_argument("--version", help="distribution version (default: the flavor's pinned newest)")
    start.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    start.add_argument("--search-threads", type=int, help="thread_pool.search.size per node")
    start.add_argument("--search-queue", type=int, help="thread_pool.search.queue_size per node")
    start.add_argument("--heap", default="512m", help="JVM heap per node (default 512m)")
    start.add_argument("--cpus", help="pin the nodes to these CPUs (taskset -c list)")
    start.add_argument("--data-dir", help="keep the cluster (and its indices) in this directory between runs")
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for green")
    for name, text in (("stop-node", "kill -9 one node of a running cluster"),
                       ("start-node", "start a stopped node again and wait until it rejoined")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--flavor", choices=sorted(FLAVORS), help="the last cluster `start` ran of this flavor")
        cmd.add_argument("--state", help="a cluster's state file (the `state` in start's JSON line)")
        cmd.add_argument("--node", type=int, required=True, help="node index, from 0")
    fetch_cmd = sub.add_parser("fetch", help="download and unpack a distribution (and find its JDK)")
    fetch_cmd.add_argument("--flavor", choices=sorted(FLAVORS), required=True, help="which server")
    fetch_cmd.add_argument("--version", help="distribution version")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            home = fetch(args.flavor, args.version)
            print(json.dumps({"flavor": args.flavor, "home": str(home), "java": str(java_home(args.flavor))}))
            return 0
        if args.command in ("stop-node", "start-node"):
            state = Path(args.state) if args.state else _latest(args.flavor) if args.flavor else None
            if state is None or not state.exists():
                parser.error("give --state, or --flavor of a cluster `start` is running")
            if state.name.endswith(".latest.json"):
                state = Path(json.loads(state.read_text())["state"])
            cluster = RealCluster.attach(state)
            if args.command == "stop-node":
                cluster.stop_node(args.node)
            else:
                cluster.start_node(args.node)
            print(json.dumps(cluster.info()), flush=True)
            return 0
        return _run(args)
    except ClusterError as exc:
        print(f"realcluster: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    class Stop(BaseException):
        """SIGTERM/SIGINT: leave whatever we were doing (waiting for green included) and stop the nodes."""

    def on_signal(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time; the nodes are being stopped
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Stop

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = RealCluster(
        args.flavor, version=args.version, nodes=args.nodes, heap=args.heap, search_threads=args.search_threads,
        search_queue=args.search_queue, cpus=args.cpus, data_dir=args.data_dir,
    )
    latest = _latest(args.flavor)
    try:
        cluster.start(timeout=args.timeout)
        latest.write_text(json.dumps({"state": str(cluster.state_file)}))
        print(json.dumps(cluster.info()), flush=True)
        while True:
            time.sleep(1)
            _reap_children()  # nodes killed by `stop-node` from another process leave zombies here
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
        try:
            if json.loads(latest.read_text())["state"] == str(cluster.state_file):
                latest.unlink()
        except (OSError, ValueError, KeyError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
