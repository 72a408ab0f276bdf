//! Shared by the integration tests: a real control plane, the CRD installed, a namespace per test.
//!
//! The control plane is found in this order:
//! 1. `CARERIX_TEST_KUBECONFIG`: set by `hack/test.sh`, which started one for the whole run.
//! 2. `USE_EXISTING_CLUSTER=true` with `KUBECONFIG`: any real cluster you point it at.
//! 3. Otherwise this test binary starts its own with `hack/control-plane.sh` (building or reusing
//!    kube-apiserver and etcd), and a watcher stops it when the binary exits, even after a panic.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::Duration,
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Root of the repository.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane every test in this binary shares.
pub struct ControlPlane {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The kubectl matching the server (the built one when we started the control plane).
    pub kubectl: PathBuf,
    /// The directory `hack/control-plane.sh` manages, when this binary started it.
    pub dir: Option<PathBuf>,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The shared control plane, started on first use, with the CRD installed and served.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let cp = find_or_start();
        install_crd(&cp);
        cp
    })
}

fn find_or_start() -> ControlPlane {
    let kubectl_default = PathBuf::from("kubectl");
    if let Ok(path) = std::env::var("CARERIX_TEST_KUBECONFIG") {
        let kubectl = std::env::var("CARERIX_TEST_KUBECTL").map(PathBuf::from).unwrap_or(kubectl_default);
        return ControlPlane { kubeconfig: PathBuf::from(path), kubectl, dir: None };
    }
    if std::env::var("USE_EXISTING_CLUSTER").as_deref() == Ok("true") {
        let path = std::env::var("KUBECONFIG")
            .expect("USE_EXISTING_CLUSTER=true needs KUBECONFIG pointing at the cluster to test against");
        return ControlPlane { kubeconfig: PathBuf::from(path), kubectl: kubectl_default, dir: None };
    }
    start_control_plane(std::env::temp_dir().join(format!("carerix-operator-cp-{}", std::process::id())))
}

/// Starts kube-apiserver and etcd of this test binary alone in `dir` (`hack/control-plane.sh`);
/// they stop when the binary ends.
pub fn start_control_plane(dir: PathBuf) -> ControlPlane {
    let out = Command::new(repo_root().join("hack/control-plane.sh"))
        .arg("start")
        .arg(&dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .output()
        .expect("could not run hack/control-plane.sh (bash, openssl, curl and python3 are needed)");
    assert!(
        out.status.success(),
        "hack/control-plane.sh could not start kube-apiserver and etcd:\n{}\nRun `hack/build-testbin.sh` \
         to see the build, or set USE_EXISTING_CLUSTER=true with KUBECONFIG to use another cluster.",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = std::fs::read_to_string(dir.join("bin")).expect("control plane wrote its bin dir");
    ControlPlane {
        kubeconfig: dir.join("kubeconfig"),
        kubectl: PathBuf::from(bin.trim()).join("kubectl"),
        dir: Some(dir),
    }
}

/// Installs the CRD on `cp` and waits until it is served.
pub fn install_crd(cp: &ControlPlane) {
    let crd = repo_root().join("crds");
    let out =
        cp.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crd.to_str().unwrap_or("crds")]);
    assert!(out.status.success(), "installing the CRD failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/carerixconnections.hiredata.io",
    ]);
    assert!(out.status.success(), "the CRD was not established: {}", String::from_utf8_lossy(&out.stderr));
    // Discovery lags behind Established: wait until the resource is served.
    for _ in 0..100 {
        let out = cp.kubectl(&["get", "--raw", "/apis/hiredata.io/v1alpha1"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"carerixconnections\"") {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the API server never served hiredata.io/v1alpha1 carerixconnections");
}

impl ControlPlane {
    /// Runs kubectl against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl could not be run")
    }

    /// Runs kubectl with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl could not be run");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write to kubectl");
        child.wait_with_output().expect("kubectl output")
    }

    /// A fresh client for the calling test's runtime.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("readable kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("valid kubeconfig");
        Client::try_from(config).expect("a kube client")
    }

    /// Creates a namespace of its own for one test.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let out = self.kubectl(&["create", "namespace", &name]);
        assert!(out.status.success(), "creating namespace {name}: {}", String::from_utf8_lossy(&out.stderr));
        let _ = self.kubectl(&["label", "namespace", &name, "carerix-operator-test=true"]);
        name
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The helm binary: `CARERIX_TEST_HELM` (set by `hack/test.sh`), else the `helm` next to the test
/// kubectl, else the one `hack/build-testbin.sh` builds (or finds cached).
pub fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Ok(path) = std::env::var("CARERIX_TEST_HELM") {
            return PathBuf::from(path);
        }
        if let Some(dir) = std::env::var("CARERIX_TEST_KUBECTL").ok().as_deref().map(Path::new).and_then(Path::parent)
            && dir.join("helm").is_file()
        {
            return dir.join("helm");
        }
        let out = Command::new(repo_root().join("hack/build-testbin.sh"))
            .output()
            .expect("could not run hack/build-testbin.sh (bash and Go are needed)");
        assert!(
            out.status.success(),
            "hack/build-testbin.sh could not build helm:\n{}\nSet CARERIX_TEST_HELM to a helm v4 binary instead.",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
        PathBuf::from(dir).join("helm")
    })
}

/// A tool that `hack/build-testbin.sh` builds with Go (`argocd-lua-health`, `kstatus`, ...): from
/// `CARERIX_TEST_TESTBIN` (set by `hack/test.sh`), else built now (or found cached) by the script.
pub fn testbin_tool(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    if let Ok(dir) = std::env::var("CARERIX_TEST_TESTBIN") {
        return PathBuf::from(dir).join(name);
    }
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let out = Command::new(repo_root().join("hack/build-testbin.sh"))
        .arg(name)
        .output()
        .expect("could not run hack/build-testbin.sh (bash is needed)");
    assert!(
        out.status.success(),
        "hack/build-testbin.sh could not build {name} (it needs Go 1.26 or newer):\n{}\nhack/test.sh checks \
         what the machine lacks and says how to get it.",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
    let path = PathBuf::from(dir).join(name);
    built.push((name.to_string(), path.clone()));
    path
}

/// Runs helm (no cluster access needed for `lint` and `template`).
pub fn helm(args: &[&str]) -> Output {
    Command::new(helm_binary())
        .args(args)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("carerix-operator-helm/cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("carerix-operator-helm/config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("carerix-operator-helm/data"))
        .output()
        .expect("helm could not be run")
}

pub mod e2e;
