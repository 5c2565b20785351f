"""The local stand-in for a Databricks SQL warehouse: an Apache Spark Connect server.

Databricks SQL is Spark SQL, so locally the statements the production Databricks path sends run
on Apache Spark from PyPI (the ``pyspark`` wheel ships Spark's jars and its Connect server) on the
machine's Java 17, as one background process of the local stack (``stack.up`` starts it, on a
loopback port; ``stack.down`` stops it). Unity Catalog three-part names and views in them come
from a small catalog plugin, ``spark_catalog/LocalUnityCatalog.java``, compiled here with the
JDK's ``javac`` against the wheel's jars the first time the stack starts (into the local dir,
never into the repository).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bq_assets.errors import BqAssetsError

CATALOG_SOURCE = Path(__file__).parent / "spark_catalog" / "LocalUnityCatalog.java"
#: Unity Catalog's is_account_group_member for dynamic views (a session extension).
GROUPS_SOURCE = Path(__file__).parent / "spark_catalog" / "AccountGroups.java"
SOURCES = (CATALOG_SOURCE, GROUPS_SOURCE)
CATALOG_CLASS = "bqassets.standin.LocalUnityCatalog"
GROUPS_EXTENSION = "bqassets.standin.AccountGroups"
#: The file of the local user's account groups (one per line), under the stack's spark folder.
ACCOUNT_GROUPS_FILE = "account_groups"
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
#: Spark 4 runs on Java 17 or 21; Debian's OpenJDK 17 is the one this project is tested on.
JAVA_VERSIONS = ("17", "21")
#: The driver's heap. Counts, checksums and column reads stream through Parquet, so this stays
#: small whatever the table's size (BQ_ASSETS_SPARK_MEMORY overrides it).
DEFAULT_DRIVER_MEMORY = "1g"


class SparkSetupError(BqAssetsError):
    """Java, javac or pyspark is missing, or the catalog plugin does not compile."""


def spark_home() -> Path:
    """The pyspark wheel's folder: Spark's jars, ``bin/spark-submit`` and the Connect server."""
    try:
        import pyspark
    except ImportError as exc:
        raise SparkSetupError(
            "pyspark is not installed: install the local extra (`pip install -e .[local]`)."
        ) from exc
    return Path(pyspark.__file__).parent


def java_home() -> Path:
    """A JDK 17 (or 21): ``JAVA_HOME`` if it is one, else the first under /usr/lib/jvm."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        for version in JAVA_VERSIONS:
            candidates += sorted(jvm.glob(f"java-{version}-openjdk*"))
    for home in candidates:
        release = home / "release"
        version = ""
        if release.exists():
            for line in release.read_text(errors="replace").splitlines():
                if line.startswith("JAVA_VERSION="):
                    version = line.split("=", 1)[1].strip('"')
        if (home / "bin" / "javac").exists() and version.split(".")[0] in JAVA_VERSIONS:
            return home
    raise SparkSetupError(
        "No JDK 17 or 21 found for the local Spark stand-in (looked at JAVA_HOME and "
        "/usr/lib/jvm/java-{17,21}-openjdk*). Install Debian's openjdk-17-jdk-headless."
    )


def catalog_jar(folder: Path) -> Path:
    """The catalog plugin compiled into ``folder/bq-assets-catalog.jar``; compiled again only
    when the source is newer than the jar. Idempotent."""
    jar = folder / "bq-assets-catalog.jar"
    if jar.exists() and all(jar.stat().st_mtime >= s.stat().st_mtime for s in SOURCES):
        return jar
    bin_dir = java_home() / "bin"
    classes = folder / "classes"
    shutil.rmtree(classes, ignore_errors=True)
    classes.mkdir(parents=True)
    classpath = str(spark_home() / "jars" / "*")
    for command in (
        [str(bin_dir / "javac"), "-d", str(classes), "-cp", classpath, *map(str, SOURCES)],
        [str(bin_dir / "jar"), "cf", str(jar) + ".partial", "-C", str(classes), "."],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SparkSetupError(
                f"Building the local Spark catalog plugin failed ({' '.join(command[:2])}):\n"
                f"{done.stdout}{done.stderr}"
            )
    os.replace(str(jar) + ".partial", jar)
    return jar


def account_groups_file(root: Path) -> Path:
    """Where the local user's account groups are listed, one per line (read at each use of
    ``is_account_group_member``: writing it changes what a dynamic view shows at once)."""
    return root / "spark" / ACCOUNT_GROUPS_FILE


def server_command(port: int, root: Path) -> tuple[list[str], dict[str, str]]:
    """The Spark Connect server's command line and extra environment: ``local[2]`` on a loopback
    port, no UI, UTC sessions, its scratch space under ``root/spark``."""
    folder = root / "spark"
    folder.mkdir(parents=True, exist_ok=True)
    jar = catalog_jar(folder)
    memory = os.environ.get("BQ_ASSETS_SPARK_MEMORY", DEFAULT_DRIVER_MEMORY)
    conf = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(folder / "session-warehouse"),
        "spark.local.dir": str(folder / "tmp"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={folder}",
        # Databricks SQL warehouses run with ANSI mode on (Databricks' "ANSI_MODE" page), as
        # does Spark 4 by default; said explicitly so the stand-in cannot drift from it.
        "spark.sql.ansi.enabled": "true",
        # is_account_group_member(group), as on a SQL warehouse: true for the groups listed in
        # this file (the stand-in's one user; none unless a test or a user writes them).
        "spark.sql.extensions": GROUPS_EXTENSION,
        "spark.bq_assets.account_groups_file": str(account_groups_file(root)),
    }
    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--class", SERVER_CLASS,
        "--name", "bq-assets-databricks-stand-in",
        "--master", "local[2]",
        "--driver-memory", memory,
        "--jars", str(jar),
    ]  # fmt: skip
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    command.append("spark-internal")
    env = {
        "JAVA_HOME": str(java_home()),
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOG_DIR": str(folder / "logs"),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    return command, env
