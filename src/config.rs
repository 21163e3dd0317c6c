//! Command-line configuration of the `stepup` binary. Every flag has an environment variable,
//! so the Helm chart can set them either way.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;
use stepup_core::{
    api::Duration,
    keys::{KeyError, MasterKey},
};

#[derive(Parser, Debug)]
#[command(name = "stepup", version, about = "kube-stepup: step-up authentication for Kubernetes")]
pub struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, env = "STEPUP_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the validating admission webhook.
    Webhook(Box<WebhookArgs>),
    /// Run the controller: verify challenges, issue grants, manage enrollments.
    Controller(Box<ControllerArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crdgen,
    /// Print a new master key (base64) for --key-file.
    Keygen,
    /// Render the API server's AuthorizationConfiguration (`--authorization-config`) that sends
    /// what policies name with verbs (reads) to the webhook, before RBAC.
    AuthorizerConfig(Box<AuthorizerConfigArgs>),
}

#[derive(Args, Debug)]
pub struct AuthorizerConfigArgs {
    /// Absolute path, on the API server's host, of the kubeconfig naming the webhook's
    /// `/authorize` URL, its CA, and the client certificate the API server presents.
    #[arg(long)]
    pub webhook_kubeconfig: String,

    /// Read the policies from these YAML files (`-` for standard input) instead of the cluster.
    #[arg(long = "filename", short = 'f')]
    pub filenames: Vec<PathBuf>,

    /// Write the file here (atomically, and only when it changed) instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,

    /// Seconds the API server waits for the webhook before its failure policy (Deny).
    #[arg(long, default_value_t = 3)]
    pub timeout_seconds: u32,

    /// Put the Node authorizer first (clusters with kubelets; kubeadm's default chain is Node,RBAC).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub node_authorizer: bool,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// Identities, shared by the webhook and the controller.
#[derive(Args, Debug, Clone)]
pub struct IdentityArgs {
    /// Namespace stepup runs in; its objects are never subject to policies.
    #[arg(long, env = "STEPUP_NAMESPACE", default_value = "stepup-system")]
    pub namespace: String,

    /// Username of the controller, the only writer of grants
    /// [default: system:serviceaccount:<namespace>:stepup-controller].
    #[arg(long, env = "STEPUP_CONTROLLER_USER")]
    pub controller_user: Option<String>,

    /// Username of the webhook's service account [default:
    /// system:serviceaccount:<namespace>:stepup-webhook]: its own requests are never reviewed,
    /// and with the controller it is the only writer of the audit trail (StepUpLogs).
    #[arg(long, env = "STEPUP_WEBHOOK_USER")]
    pub webhook_user: Option<String>,

    /// Groups whose members approve enrollment keys, allow re-enrollments, unlock and revoke any grant.
    #[arg(long = "admin-group", env = "STEPUP_ADMIN_GROUPS", value_delimiter = ',', default_value = "stepup:admins")]
    pub admin_groups: Vec<String>,

    /// Groups that bypass every policy, loudly (warning, Event, metric, audit line).
    #[arg(long = "break-glass-group", env = "STEPUP_BREAK_GLASS_GROUPS", value_delimiter = ',')]
    pub break_glass_groups: Vec<String>,

    /// The master key file (32 random bytes, raw or base64; `stepup keygen` makes one). Mount it
    /// from outside the Kubernetes API (a KMS or secrets-store CSI volume) for the full
    /// guarantee. The controller signs grants, opens sealed codes and encrypts factor seeds with
    /// keys derived from it; the webhook derives only the public key that verifies grants.
    #[arg(long, env = "STEPUP_KEY_FILE", default_value = "/etc/stepup/keys/master.key")]
    pub key_file: PathBuf,

    /// The largest clock difference tolerated between the controller, the webhook and the API
    /// server: a grant issued further in the future than this is refused, and deadlines are
    /// enforced with this much slack. Keep the clocks in sync (NTP) and this small.
    #[arg(long, env = "STEPUP_MAX_CLOCK_SKEW", default_value = "10s")]
    pub max_clock_skew: Duration,

    /// Treat service accounts whose credential is not bound to a pod (impersonated with
    /// `--as`, or a token from `kubectl create token`) as the people wearing them: policies
    /// without subjects apply. `false` restores the old behaviour (every service account is
    /// a workload).
    #[arg(long, env = "STEPUP_SERVICE_ACCOUNT_MASKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub service_account_masks: bool,

    /// Namespaces whose service accounts stay workloads without a pod-bound credential: the
    /// control plane mints such tokens for its own controllers (kube-system). Whoever may mint
    /// tokens or impersonate there can skip people's policies.
    #[arg(
        long = "trusted-service-account-namespace",
        env = "STEPUP_TRUSTED_SERVICE_ACCOUNT_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub trusted_service_account_namespaces: Vec<String>,

    /// The `userInfo.extra` key the API server's AuthenticationConfiguration maps the ID
    /// token's `acr` claim to (policies accepting `Session` read it). Impersonating this key,
    /// the two below and the credential id is refused to everyone.
    #[arg(long, env = "STEPUP_SIGN_IN_ACR_EXTRA", default_value = stepup_core::policy::ACR_EXTRA, value_parser = sign_in_key)]
    pub sign_in_acr_extra: String,

    /// The extra key the `amr` claim is mapped to.
    #[arg(long, env = "STEPUP_SIGN_IN_AMR_EXTRA", default_value = stepup_core::policy::AMR_EXTRA, value_parser = sign_in_key)]
    pub sign_in_amr_extra: String,

    /// The extra key the `auth_time` claim is mapped to (seconds since the epoch, as a string).
    #[arg(long, env = "STEPUP_SIGN_IN_AUTH_TIME_EXTRA", default_value = stepup_core::policy::AUTH_TIME_EXTRA, value_parser = sign_in_key)]
    pub sign_in_auth_time_extra: String,
}

/// Per-user limits on challenges, shared by the webhook (which refuses at admission) and the
/// controller (which refuses from its cache before spending API calls).
#[derive(Args, Debug, Clone)]
pub struct ChallengeLimitArgs {
    /// Challenges of one user waiting for a verdict at once (0: no limit).
    #[arg(long, env = "STEPUP_MAX_PENDING_CHALLENGES", default_value_t = 3)]
    pub max_pending_challenges: u32,

    /// Challenges one user may create per --challenge-rate-window (0: no limit).
    #[arg(long, env = "STEPUP_MAX_CHALLENGES_PER_WINDOW", default_value_t = 10)]
    pub max_challenges_per_window: u32,

    #[arg(long, env = "STEPUP_CHALLENGE_RATE_WINDOW", default_value = "1m")]
    pub challenge_rate_window: Duration,
}

impl ChallengeLimitArgs {
    pub fn limits(&self) -> stepup_core::limits::ChallengeLimits {
        stepup_core::limits::ChallengeLimits {
            max_pending: self.max_pending_challenges,
            max_per_window: self.max_challenges_per_window,
            window: self.challenge_rate_window.as_signed(),
        }
    }
}

impl IdentityArgs {
    pub fn webhook_user(&self) -> String {
        self.webhook_user.clone().unwrap_or_else(|| format!("system:serviceaccount:{}:stepup-webhook", self.namespace))
    }

    pub fn masks(&self) -> stepup_core::policy::Masks {
        stepup_core::policy::Masks {
            enabled: self.service_account_masks,
            trusted_namespaces: self.trusted_service_account_namespaces.clone(),
        }
    }

    /// Where a sign-in's claims arrive; the three flags must name three different keys.
    pub fn sign_in_keys(&self) -> Result<stepup_core::policy::SignInKeys, crate::error::RunError> {
        stepup_core::policy::SignInKeys::new(
            &self.sign_in_acr_extra,
            &self.sign_in_amr_extra,
            &self.sign_in_auth_time_extra,
        )
        .map_err(|e| crate::error::RunError::Config(format!("--sign-in-*-extra: {e}")))
    }

    pub fn controller_user(&self) -> String {
        self.controller_user
            .clone()
            .unwrap_or_else(|| format!("system:serviceaccount:{}:stepup-controller", self.namespace))
    }
}

/// What the decision is configured with beyond identities. The webhook decides with it; the
/// controller receives the same flags (the chart renders them once for both) and publishes
/// the result, so that `kubectl stepup check` decides as the webhook does.
#[derive(Args, Debug, Clone)]
pub struct DecisionArgs {
    /// Users no policy applies to (e.g. a GitOps controller's service account).
    #[arg(long = "exempt-user", env = "STEPUP_EXEMPT_USERS", value_delimiter = ',')]
    pub exempt_users: Vec<String>,

    /// Groups no policy applies to.
    #[arg(long = "exempt-group", env = "STEPUP_EXEMPT_GROUPS", value_delimiter = ',')]
    pub exempt_groups: Vec<String>,

    /// Namespaces whose objects no policy applies to, besides kube-system and stepup's own.
    #[arg(long = "exempt-namespace", env = "STEPUP_EXEMPT_NAMESPACES", value_delimiter = ',')]
    pub exempt_namespaces: Vec<String>,

    /// Require step-up for changes to StepUpPolicy objects themselves, with this maximum
    /// grant age; `0` turns the built-in rule off.
    #[arg(long, env = "STEPUP_PROTECT_POLICIES", default_value = "15m", value_parser = builtin_max_age)]
    pub protect_policies: Duration,
}

/// The decision's settings from the flags: the one function both processes build them with.
pub fn decision_settings(
    identity: &IdentityArgs,
    decision: &DecisionArgs,
) -> Result<stepup_core::decision::DecisionSettings, crate::error::RunError> {
    Ok(stepup_core::decision::DecisionSettings {
        namespace: identity.namespace.clone(),
        controller_users: vec![identity.controller_user()],
        webhook_users: vec![identity.webhook_user()],
        admin_groups: identity.admin_groups.clone(),
        break_glass_groups: identity.break_glass_groups.clone(),
        exempt_users: decision.exempt_users.clone(),
        exempt_groups: decision.exempt_groups.clone(),
        exempt_namespaces: stepup_core::decision::exempt_namespaces(&identity.namespace, &decision.exempt_namespaces),
        protect_policies: (!decision.protect_policies.is_zero()).then_some(decision.protect_policies),
        service_account_masks: identity.service_account_masks,
        trusted_service_account_namespaces: identity.trusted_service_account_namespaces.clone(),
        max_clock_skew: identity.max_clock_skew,
        sign_in_keys: identity.sign_in_keys()?,
    })
}

#[derive(Args, Debug, Clone)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,

    #[command(flatten)]
    pub decision: DecisionArgs,

    #[command(flatten)]
    pub challenge_limits: ChallengeLimitArgs,

    /// Address of the TLS listener the API server calls.
    #[arg(long, env = "STEPUP_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "STEPUP_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// PEM certificate chain served to the API server; reloaded when it changes.
    #[arg(long, env = "STEPUP_TLS_CERT_FILE", default_value = "/etc/stepup/tls/tls.crt")]
    pub tls_cert_file: PathBuf,

    /// PEM private key of the certificate.
    #[arg(long, env = "STEPUP_TLS_KEY_FILE", default_value = "/etc/stepup/tls/tls.key")]
    pub tls_key_file: PathBuf,

    /// How often to check the certificate files for changes.
    #[arg(long, env = "STEPUP_CERT_RELOAD_INTERVAL", default_value = "10s")]
    pub cert_reload_interval: Duration,

    /// PEM CA(s) that sign the API server's client certificate. When set, the webhook requires
    /// mutual TLS: a client without such a certificate fails the handshake, so only the API
    /// server can send reviews (configure its AdmissionConfiguration kubeconfig to present one).
    #[arg(long, env = "STEPUP_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Largest AdmissionReview accepted, in bytes.
    #[arg(long, env = "STEPUP_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Bytes of review bodies held at once across all connections; beyond that, reviews are
    /// answered 503 at once. Keeps memory bounded against many large or slow bodies.
    #[arg(long, env = "STEPUP_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes_in_flight: usize,

    /// How long a client may take to send a review's body after its headers.
    #[arg(long, env = "STEPUP_BODY_READ_TIMEOUT", default_value = "5s")]
    pub body_read_timeout: Duration,

    /// Open TLS connections at most; further clients wait in the listen backlog.
    #[arg(long, env = "STEPUP_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,

    /// Upper bound of the direct grant lookup made before denying on a cache miss.
    #[arg(long, env = "STEPUP_LOOKUP_TIMEOUT", default_value = "1500ms")]
    pub lookup_timeout: Duration,

    /// Direct grant lookups allowed in flight at once; beyond that (and for a user looked up
    /// in the last second) the cache decides, so a storm of denials cannot load the API server.
    #[arg(long, env = "STEPUP_MAX_LOOKUPS_IN_FLIGHT", default_value_t = 4)]
    pub max_lookups_in_flight: usize,

    /// How long the grant watch may be broken before grant decisions fail closed.
    #[arg(long, env = "STEPUP_GRANT_STALENESS_BOUND", default_value = "60s")]
    pub grant_staleness_bound: Duration,

    /// How long the API server keeps each watch open. A watch silent (no event, bookmark or
    /// end) for one and a half times this, plus 5s, is stalled: the cache relists.
    #[arg(long, env = "STEPUP_WATCH_TIMEOUT", default_value = "60s")]
    pub watch_timeout: Duration,

    /// After SIGTERM, keep serving (and report not ready) for this long: the API server keeps
    /// using its open connections for a while.
    #[arg(long, env = "STEPUP_DRAIN_PERIOD", default_value = "10s")]
    pub drain_period: Duration,

    /// After the drain period, how long open connections get to finish.
    #[arg(long, env = "STEPUP_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: Duration,

    /// How often the durable audit trail (StepUpLog segments) is written to the API server.
    #[arg(long, env = "STEPUP_AUDIT_FLUSH_INTERVAL", default_value = "10s")]
    pub audit_flush_interval: Duration,

    /// Refusals the durable audit trail keeps an hour from this process, in KiB of audit lines
    /// (a quarter of it for one user); the rest are counted per user in `records.dropped`
    /// records. Bounds what a flood of refusals costs etcd (README, "What it costs etcd").
    #[arg(long, env = "STEPUP_AUDIT_REFUSAL_BUDGET_KIB", default_value_t = crate::records::writer::DEFAULT_REFUSAL_BUDGET_KIB)]
    pub audit_refusal_budget_kib: u32,

    /// Minimum interval between two writes of one Event series (the same decision, policy,
    /// user and object); repeats in between are counted into the series.
    #[arg(long, env = "STEPUP_EVENT_INTERVAL", default_value = "60s")]
    pub event_interval: Duration,

    /// Most Event writes per second (bursts of four times as many), whatever the number of
    /// users refused: a denial storm cannot flood the API server.
    #[arg(long, env = "STEPUP_EVENT_RATE", default_value_t = 5.0)]
    pub event_rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,

    /// What the webhook decides with: the controller publishes it for `kubectl stepup check`.
    #[command(flatten)]
    pub decision: DecisionArgs,

    #[command(flatten)]
    pub challenge_limits: ChallengeLimitArgs,

    /// Address of the plain-HTTP admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "STEPUP_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// Name of the Lease (in the stepup namespace) that elects the one active replica.
    #[arg(long, env = "STEPUP_LEASE_NAME", default_value = "stepup-controller")]
    pub lease_name: String,

    /// How long a leader's lease lasts without renewal; a standby takes over after it.
    #[arg(long, env = "STEPUP_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: Duration,

    /// How often the leader renews and a standby retries.
    #[arg(long, env = "STEPUP_LEASE_RETRY", default_value = "2s")]
    pub lease_retry: Duration,

    /// Identity in the Lease [default: $POD_NAME, else hostname and process id].
    #[arg(long, env = "STEPUP_INSTANCE")]
    pub instance: Option<String>,

    /// Let users enroll without an admin's approval.
    #[arg(long, env = "STEPUP_SELF_SERVICE_ENROLLMENT")]
    pub self_service_enrollment: bool,

    /// How long an admin's approval of a key fingerprint (`kubectl stepup approve|reset`), and
    /// any seed sealed to a key, stays usable; each approval is used once.
    #[arg(long, env = "STEPUP_APPROVAL_WINDOW", default_value = "15m")]
    pub approval_window: Duration,

    /// How long after the controller first starts with nobody enrolled the first admin may
    /// enroll without a second admin (`kubectl stepup enroll --bootstrap`); 0 turns it off.
    #[arg(long, env = "STEPUP_BOOTSTRAP_WINDOW", default_value = "1h")]
    pub bootstrap_window: Duration,

    /// Lifetime of a grant when the challenge asks for none.
    #[arg(long, env = "STEPUP_DEFAULT_GRANT_DURATION", default_value = "1h")]
    pub default_grant_duration: Duration,

    /// Longest grant lifetime a challenge may ask for.
    #[arg(long, env = "STEPUP_MAX_GRANT_DURATION", default_value = "8h")]
    pub max_grant_duration: Duration,

    /// How long expired grants are kept as evidence before deletion.
    #[arg(long, env = "STEPUP_GRANT_RETENTION", default_value = "720h")]
    pub grant_retention: Duration,

    /// The API server's AuthenticationConfiguration file (the same file its
    /// `--authentication-config` names): the identity providers trusted for `OIDC` step-up,
    /// and how their tokens map to users. Without it, OIDC challenges are refused.
    #[arg(long, env = "STEPUP_OIDC_AUTHENTICATION_CONFIG")]
    pub oidc_authentication_config: Option<std::path::PathBuf>,

    /// The public client of an issuer (one of its audiences) for terminals without a browser:
    /// `kubectl stepup --device` signs in with the device authorization grant there. The identity
    /// provider must demand the second factor on every sign-in of this client (the device grant
    /// carries no acr_values or max_age to ask for it).
    #[arg(long, env = "STEPUP_OIDC_DEVICE_CLIENT_ID", requires = "oidc_authentication_config")]
    pub oidc_device_client_id: Option<String>,

    /// A confidential client of an issuer (one of its audiences) that people sign in with
    /// instead of the public first audience: the plugin hands the authorization code to the
    /// controller, which redeems it with the secret in --oidc-client-secret-file. For identity
    /// providers that require a client secret; the secret never leaves the controller.
    #[arg(
        long,
        env = "STEPUP_OIDC_CLIENT_ID",
        requires_all = ["oidc_authentication_config", "oidc_client_secret_file"]
    )]
    pub oidc_client_id: Option<String>,

    /// The file holding the confidential client's secret (mounted from a Secret).
    #[arg(long, env = "STEPUP_OIDC_CLIENT_SECRET_FILE", requires = "oidc_client_id")]
    pub oidc_client_secret_file: Option<std::path::PathBuf>,

    /// The WebAuthn relying party id: the domain security keys and passkeys are registered
    /// for. `localhost` (the default) binds them to the plugin's own page on this computer's
    /// loopback; an organisation's domain binds them to the origins in --webauthn-origin.
    #[arg(long, env = "STEPUP_WEBAUTHN_RP_ID", default_value = "localhost")]
    pub webauthn_rp_id: String,

    /// Where WebAuthn ceremonies may run (repeat, or separate with commas): `http://localhost`
    /// (the plugin's page, any port) or https origins within --webauthn-rp-id.
    #[arg(long, env = "STEPUP_WEBAUTHN_ORIGINS", value_delimiter = ',', default_value = "http://localhost")]
    pub webauthn_origin: Vec<url::Url>,

    /// A challenge not verified within this time is expired.
    #[arg(long, env = "STEPUP_CHALLENGE_TIMEOUT", default_value = "5m")]
    pub challenge_timeout: Duration,

    /// Finished challenges are deleted this long after creation.
    #[arg(long, env = "STEPUP_CHALLENGE_TTL", default_value = "1h")]
    pub challenge_ttl: Duration,

    /// Failed verifications tolerated per user within --failure-window.
    #[arg(long, env = "STEPUP_MAX_FAILURES", default_value_t = 5)]
    pub max_failures: u32,

    #[arg(long, env = "STEPUP_FAILURE_WINDOW", default_value = "5m")]
    pub failure_window: Duration,

    /// Consecutive failures after which a user is locked until an admin resets them
    /// (NIST SP 800-63B: at most 100).
    #[arg(long, env = "STEPUP_LOCKOUT_THRESHOLD", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub lockout_threshold: u32,

    /// Manage the ValidatingWebhookConfiguration (rules from policies, caBundle).
    #[arg(long, env = "STEPUP_MANAGE_WEBHOOK_CONFIG", default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_webhook_config: bool,

    /// Name of the ValidatingWebhookConfiguration the controller manages.
    #[arg(long, env = "STEPUP_WEBHOOK_CONFIG_NAME", default_value = "stepup.dev")]
    pub webhook_config_name: String,

    /// The webhook's Service (port 443) in the stepup namespace: path /validate for the entry
    /// that fails closed, /advise for the one that fails open.
    #[arg(long, env = "STEPUP_WEBHOOK_SERVICE", default_value = "stepup-webhook")]
    pub webhook_service: String,

    /// Register the webhook by URL instead of by Service (a webhook outside the cluster): the
    /// URL of the entry that fails closed (`https://host/validate`); the one that fails open is
    /// registered at its sibling `/advise`.
    #[arg(long, env = "STEPUP_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// The API server's timeout for one review.
    #[arg(long, env = "STEPUP_WEBHOOK_TIMEOUT", default_value = "5s")]
    pub webhook_timeout: Duration,

    /// Who provides the serving certificate and caBundle: the controller itself, or
    /// cert-manager (certificate in --tls-secret, caBundle injected by its cainjector).
    #[arg(long, env = "STEPUP_CA_BUNDLE_SOURCE", value_enum, default_value_t = CaBundleSource::Controller)]
    pub ca_bundle_source: CaBundleSource,

    /// cert-manager Certificate (in the stepup namespace) whose CA the injector puts in the caBundle.
    #[arg(long, env = "STEPUP_CERT_MANAGER_CERTIFICATE", default_value = "stepup-webhook")]
    pub cert_manager_certificate: String,

    /// Secret holding the webhook's CA and serving certificate.
    #[arg(long, env = "STEPUP_TLS_SECRET", default_value = "stepup-webhook-tls")]
    pub tls_secret: String,

    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long, env = "STEPUP_WEBHOOK_DNS_NAMES", value_delimiter = ',')]
    pub webhook_dns_names: Vec<String>,

    /// Lifetime of the webhook CA; rotated when a third of it is left.
    #[arg(long, env = "STEPUP_CA_VALIDITY", default_value = "8760h")]
    pub ca_validity: Duration,

    /// Lifetime of the serving certificate; renewed when a third of it is left.
    #[arg(long, env = "STEPUP_CERT_VALIDITY", default_value = "2160h")]
    pub cert_validity: Duration,

    /// ClusterRole that owns the webhook configuration (the chart's controller role), so
    /// uninstalling removes it.
    #[arg(long, env = "STEPUP_OWNER_CLUSTER_ROLE")]
    pub owner_cluster_role: Option<String>,

    /// How often the durable audit trail (StepUpLog segments) is written to the API server.
    #[arg(long, env = "STEPUP_AUDIT_FLUSH_INTERVAL", default_value = "10s")]
    pub audit_flush_interval: Duration,

    /// Refusals the durable audit trail keeps an hour from this process, in KiB of audit lines
    /// (a quarter of it for one user); the rest are counted per user in `records.dropped`
    /// records. Bounds what a flood of refusals costs etcd (README, "What it costs etcd").
    #[arg(long, env = "STEPUP_AUDIT_REFUSAL_BUDGET_KIB", default_value_t = crate::records::writer::DEFAULT_REFUSAL_BUDGET_KIB)]
    pub audit_refusal_budget_kib: u32,

    /// How long the durable audit trail (StepUpLog segments) is kept; a year is fine for the
    /// API server (see README for the etcd cost).
    #[arg(long, env = "STEPUP_AUDIT_RETENTION", default_value = "2160h")]
    pub audit_retention: Duration,

    /// The chart's ValidatingAdmissionPolicies (each bound by a binding of the same name): the
    /// controller reports loudly when one is removed, since no admission can protect them.
    #[arg(long = "admission-policy", env = "STEPUP_ADMISSION_POLICIES", value_delimiter = ',')]
    pub admission_policies: Vec<String>,

    /// Test hook: exit (status 86) right after this step of answering a challenge that earns
    /// a grant. Ignored by release builds.
    #[arg(long, hide = true, value_enum)]
    pub crash_at: Option<CrashPoint>,

    /// Test hook: panic in the challenge reconciler at this step (a bug's panic). Ignored by
    /// release builds.
    #[arg(long, hide = true, value_enum)]
    pub panic_at: Option<CrashPoint>,

    /// Test hook: wait this long after the last deadline check before issuing a grant (a slow
    /// controller, caught in the worst moment). Ignored by release builds.
    #[arg(long, hide = true)]
    pub pause_before_issuing: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CaBundleSource {
    Controller,
    CertManager,
}

/// A `userInfo.extra` key the API server can map a sign-in's claim to.
fn sign_in_key(s: &str) -> Result<String, String> {
    stepup_core::policy::check_sign_in_key(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A maximum grant age for a built-in policy: `0` (off) or within the range policies allow.
fn builtin_max_age(s: &str) -> Result<Duration, String> {
    let age: Duration = s.parse().map_err(|e: stepup_core::api::ParseDurationError| e.to_string())?;
    if age.is_zero() {
        return Ok(age);
    }
    stepup_core::policy::check_max_age(age)?;
    Ok(age)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Webhook {
        #[command(flatten)]
        args: WebhookArgs,
    }

    #[test]
    fn a_built_in_max_age_outside_the_policy_range_is_refused_at_startup_not_clamped() {
        let parse = |age: &str| Webhook::try_parse_from(["stepup", "--protect-policies", age]).map(|w| w.args);
        assert_eq!(parse("30m").expect("in range").decision.protect_policies, Duration::from_secs(30 * 60));
        assert!(parse("0").expect("off").decision.protect_policies.is_zero());
        let error = parse("48h").expect_err("48h is refused").to_string();
        assert!(error.contains("48h is outside the allowed range 1s..24h"), "{error}");
    }

    #[derive(Parser)]
    struct Controller {
        #[command(flatten)]
        args: ControllerArgs,
    }

    /// The chart renders the decision flags once for both processes: given them, the controller
    /// publishes exactly what the webhook decides with.
    #[test]
    fn the_controller_publishes_what_the_webhook_decides_with() {
        let flags = [
            "--namespace=stepup",
            "--admin-group=ops,sre",
            "--break-glass-group=glass",
            "--exempt-user=system:serviceaccount:argocd:argocd-application-controller",
            "--exempt-group=robots",
            "--exempt-namespace=sandbox,stepup",
            "--protect-policies=5m",
            "--service-account-masks=false",
            "--trusted-service-account-namespace=kube-system,flux-system",
            "--max-clock-skew=3s",
            "--sign-in-acr-extra=sso.example.com/acr",
            "--sign-in-amr-extra=sso.example.com/amr",
            "--sign-in-auth-time-extra=sso.example.com/auth-time",
        ];
        let webhook = Webhook::try_parse_from(std::iter::once("stepup").chain(flags)).unwrap().args;
        let controller = Controller::try_parse_from(std::iter::once("stepup").chain(flags)).unwrap().args;
        let published = decision_settings(&controller.identity, &controller.decision).unwrap();
        assert_eq!(decision_settings(&webhook.identity, &webhook.decision).unwrap(), published);
        assert_eq!(
            published.sign_in_keys.forgeable()[..3],
            ["sso.example.com/acr", "sso.example.com/amr", "sso.example.com/auth-time"]
        );
        assert_eq!(published.exempt_namespaces, ["kube-system", "stepup", "sandbox"]);
        assert_eq!(published.protect_policies, Some(Duration::from_secs(300)));
        assert_eq!(published.controller_users, ["system:serviceaccount:stepup:stepup-controller"]);
        assert!(!published.service_account_masks);
        assert_ne!(published, stepup_core::decision::DecisionSettings::defaults("stepup"));
    }

    #[test]
    fn sign_in_keys_the_api_server_could_not_map_are_refused_with_the_flag_named() {
        let err = Webhook::try_parse_from(["stepup", "--sign-in-acr-extra=ACR"]).unwrap_err().to_string();
        assert!(err.contains("--sign-in-acr-extra") && err.contains("lowercase"), "{err}");
        let err = Webhook::try_parse_from(["stepup", "--sign-in-amr-extra=authentication.kubernetes.io/amr"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--sign-in-amr-extra") && err.contains("Kubernetes' own"), "{err}");
        // Each key is well formed, but one key cannot carry two claims.
        let args = Webhook::try_parse_from(["stepup", "--sign-in-amr-extra=stepup.dev/acr"]).unwrap().args;
        let err = decision_settings(&args.identity, &args.decision).unwrap_err().to_string();
        assert!(err.contains("--sign-in-*-extra") && err.contains("three different keys"), "{err}");
    }
}

/// The steps of answering a challenge that earns a grant, in order: where the test hook
/// `--crash-at` stops the controller, to show that a crash at any of them yields exactly one
/// grant, a spent time step, and a verdict that tells the truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CrashPoint {
    /// The withdrawal finalizer is on the challenge; nothing verified yet.
    Claimed,
    /// The code's time step is recorded as spent; no grant yet.
    Recorded,
    /// The grant exists; the challenge does not say so yet.
    Issued,
    /// The verdict is written; the sealed code is still on the challenge.
    Answered,
    /// The sealed code is scrubbed; the Events and records are not written yet.
    Scrubbed,
}

/// Reads the master key file (`--key-file`); the core parses what it holds.
pub fn read_master_key(path: &std::path::Path) -> Result<MasterKey, KeyError> {
    let shown = path.display().to_string();
    let raw = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| KeyError::Read { path: shown.clone(), message: e.to_string() })?,
    );
    MasterKey::from_file_contents(&raw, &shown)
}

#[cfg(test)]
mod key_file_tests {
    use super::*;

    #[test]
    fn a_key_file_is_read_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        assert!(read_master_key(&raw).is_ok());
        let missing = dir.path().join("missing");
        let err = read_master_key(&missing).expect_err("no file");
        assert!(matches!(err, KeyError::Read { .. }) && err.to_string().contains("missing"), "{err}");
    }
}
