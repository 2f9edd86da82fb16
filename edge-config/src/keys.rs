//! The key table: every section and key of `runnel.toml`, in file order, with the comment the
//! default file shows for it and the kind of value it takes.
//!
//! The table drives three things: the unknown-key check (with the list of allowed keys in the
//! error), the typing of `RUNNEL_*` values, and the comments of [`crate::Config::default_toml`].
//! Values themselves come from serializing `Config::default()`, so a default is written in one
//! place only. A test checks that this table and the serde structs name the same keys.

/// What kind of value a key takes; decides how an environment variable's text is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `true` / `false`.
    Bool,
    /// An integer.
    Int,
    /// A number with a fraction.
    Float,
    /// Free text: a path or host name; never reinterpreted as a number.
    Text,
    /// One of a fixed set of strings.
    Choice,
    /// An IP address and port.
    Addr,
    /// A byte size (integer of bytes, or "64MiB"); sometimes also "unlimited" / -1.
    Bytes,
    /// A duration (integer of milliseconds, or "10s"); sometimes also "forever" / -1.
    Duration,
    /// An array of tables (`[[plugins.load]]`); not settable from the environment.
    Tables,
    /// An array of strings; from the environment, comma-separated.
    List,
}

/// One key of a section.
pub(crate) struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// The comment above the key in the default file: what it does, what it costs, what is
    /// allowed. Lines are separated by `\n`.
    pub doc: &'static str,
}

/// One section (`[broker]`, `[listeners.kafka]`) and its keys.
pub(crate) struct Section {
    pub path: &'static str,
    pub doc: &'static str,
    pub keys: &'static [Key],
}

const fn key(name: &'static str, kind: Kind, doc: &'static str) -> Key {
    Key { name, kind, doc }
}

use Kind::*;

pub(crate) const SECTIONS: &[Section] = &[
    Section {
        path: "broker",
        doc: "This node: identity, data directory and limits.",
        keys: &[
            key(
                "node_id",
                Int,
                "Id of this broker in Metadata responses. Allowed: 0 or more.",
            ),
            key(
                "data_dir",
                Text,
                "Directory for segments, metadata (redb) and the generated QUIC certificate.\nRelative paths start at the working directory. Needs room for all retained data.",
            ),
            key(
                "advertised_host",
                Text,
                "Host clients are told to connect to in Metadata responses.\n\"\" = the address each listener is bound to; for a Kafka listener bound to\n0.0.0.0 or ::, the address the client connected to. Set it for clients behind NAT or a name.",
            ),
            key(
                "auto_create_topics",
                Bool,
                "Create unknown topics when a client asks for their metadata (Kafka clients do\nbefore producing; a bare Produce or a QUIC datagram does not). A typo in a client\nthen creates a topic instead of failing. Allowed: true, false.",
            ),
            key(
                "default_partitions",
                Int,
                "Partitions of an auto-created topic. Each costs an open file per segment and an index.\nAllowed: 1..=10000.",
            ),
            key(
                "default_replication_factor",
                Int,
                "Replication factor given to a CreateTopics request that asks for -1 on a broker\nalone. Allowed: 1. In a [cluster] every broker holds every topic: the factor is\nthe number of brokers there.",
            ),
            key(
                "max_request_bytes",
                Bytes,
                "Largest request frame accepted, checked before allocating; a connection may\nhold this much memory. Allowed: 1KiB..=2GiB (\"64MiB\", \"100MB\" or bytes).",
            ),
            key(
                "max_connections",
                Int,
                "Client connections open at once on each listener; over it, TCP connections wait\nto be accepted and QUIC connections are refused. Each costs a task, buffers and a\nfile descriptor. Allowed: 1 or more.",
            ),
            key(
                "max_connections_per_ip",
                Int,
                "Connections open at once from one IP address on the Kafka listeners (TCP and\nTLS together), as Kafka's max.connections.per.ip; one more is closed when\naccepted. QUIC devices are not counted; peer brokers are.\n0 (the default): no limit. Allowed: 0 or more.",
            ),
            key(
                "max_connections_per_ip_overrides",
                List,
                "Other limits for some addresses, as Kafka's max.connections.per.ip.overrides:\n[\"192.0.2.7:200\", \"::1:50\"] (0 refuses the address). From the environment:\ncomma-separated.",
            ),
            key(
                "handshake_timeout",
                Duration,
                "Time a new connection has to finish its TLS or QUIC handshake.\nAllowed: more than 0s (\"10s\", \"250ms\" or milliseconds).",
            ),
            key(
                "connections_max_idle",
                Duration,
                "A Kafka connection (TCP or TLS) that sends nothing for this long is closed, as\nKafka's connections.max.idle.ms (QUIC has listeners.quic.idle_timeout).\nAllowed: more than 0s (\"10m\", \"30s\" or milliseconds).",
            ),
            key(
                "connections_max_reauth",
                Duration,
                "The longest a SASL login on a Kafka listener lasts before the client must log in\nagain on its connection (Kafka's connections.max.reauth.ms; an OAUTHBEARER login\nlasts no longer than its token in any case). 0 (the default): PLAIN and SCRAM\nlogins last the connection's life.\nAllowed: 0s or more (\"1h\", \"10m\" or milliseconds).",
            ),
            key(
                "max_fetch_sessions",
                Int,
                "Consumers' incremental fetch sessions (KIP-227) kept at once, as Kafka's\nmax.incremental.fetch.session.cache.slots; about 150 bytes per partition each\nfetches. 0: none, every fetch is a full one. Allowed: 0..=100000.",
            ),
            key(
                "fetch_max_bytes",
                Bytes,
                "The most record bytes one Fetch answer carries whatever the consumer asks, as\nKafka's fetch.max.bytes (answers are built in memory). Allowed: 1KiB..=2GiB\n(\"55MiB\", \"8MB\" or bytes).",
            ),
            key(
                "fetch_memory_bytes",
                Bytes,
                "The memory all consumers' Fetch answers may hold at once, until written to their\nclients. Default 256MiB. Past it an answer gets what is left, or only its first\nbatch, so stalled consumers cannot exhaust the gateway's memory. Allowed:\n1MiB..=1TiB.",
            ),
            key(
                "queued_max_request_bytes",
                Bytes,
                "The memory requests over 1 MiB may hold at once while read and handled, as\nKafka's queued.max.request.bytes; past it such a request waits (its connection is\nnot read); one whose bytes stop coming for 30 s is given up. Default 512MiB.\nAllowed: 1MiB..=1TiB.",
            ),
        ],
    },
    Section {
        path: "listeners.kafka",
        doc: "Kafka protocol over plaintext TCP. Readable on the wire: keep it on loopback\nor a trusted network.",
        keys: &[
            key(
                "enabled",
                Bool,
                "Serve this listener. Allowed: true, false.",
            ),
            key(
                "address",
                Addr,
                "TCP address to bind: IP and port (\"0.0.0.0:9092\" = all interfaces, port 0 = any\nfree port).",
            ),
            key(
                "sasl_plain_file",
                Text,
                "File of \"<user> <secret>\" lines (# comments). \"\" = no authentication.\nWhen set, clients must authenticate with SASL PLAIN, SCRAM-SHA-256 or\nSCRAM-SHA-512 (librdkafka: security.protocol=SASL_PLAINTEXT,\nsasl.mechanism=SCRAM-SHA-256) and are User:<user>.\nA user may have two lines (both secrets work); a # after a space starts a\ncomment. Read at start-up and again when it changes.",
            ),
            key(
                "sasl_oauthbearer",
                Bool,
                "Take SASL OAUTHBEARER logins: JSON Web Tokens checked as [oauthbearer] says\n(librdkafka: sasl.mechanism=OAUTHBEARER); the client is User:<sub>. With it,\nclients must authenticate. Allowed: true, false.",
            ),
        ],
    },
    Section {
        path: "listeners.kafka_tls",
        doc: "Kafka protocol over TLS.",
        keys: &[
            key(
                "enabled",
                Bool,
                "Serve this listener; costs a handshake per connection. Allowed: true, false.",
            ),
            key("address", Addr, "TCP address to bind."),
            key(
                "cert",
                Text,
                "PEM certificate chain, leaf first. Required when enabled.",
            ),
            key(
                "key",
                Text,
                "PEM private key of the certificate. Required when enabled.",
            ),
            key(
                "client_ca",
                Text,
                "PEM CA certificate(s). \"\" = clients need no certificate; when set, every\nclient must present a certificate signed by this CA.",
            ),
            key(
                "client_auth",
                Choice,
                "With client_ca: required = every client presents a certificate; requested =\na client without one is User:ANONYMOUS (or its SASL user), as Kafka's\nssl.client.auth. Allowed: required, requested.",
            ),
            key(
                "client_principal",
                Choice,
                "With client_ca: a client certificate's principal. cn = User:<CN>;\ndn = User:<subject DN> as Kafka writes it (User:CN=alice,OU=eng,O=Acme), so\nACLs written for Kafka apply. Allowed: cn, dn.",
            ),
            key(
                "client_principal_rules",
                List,
                "With client_ca: Kafka's ssl.principal.mapping.rules, tried in order on the\nsubject DN: \"RULE:pattern/replacement/\" (L or U after it to lower or upper\nthe name) or \"DEFAULT\" (the DN). A DN no rule matches is refused. [] = none:\nclient_principal decides. E.g. [\"RULE:^CN=(.*?),OU=devices.*$/$1/L\", \"DEFAULT\"].",
            ),
            key(
                "sasl_plain_file",
                Text,
                "File of \"<user> <secret>\" lines (# comments). \"\" = no authentication.\nWhen set, clients must authenticate with SASL PLAIN, SCRAM-SHA-256 or\nSCRAM-SHA-512 (librdkafka: security.protocol=SASL_SSL,\nsasl.mechanism=SCRAM-SHA-256) and are User:<user>.\nA user may have two lines (both secrets work); a # after a space starts a\ncomment. Read at start-up and again when it changes.",
            ),
            key(
                "sasl_oauthbearer",
                Bool,
                "Take SASL OAUTHBEARER logins: JSON Web Tokens checked as [oauthbearer] says\n(librdkafka: sasl.mechanism=OAUTHBEARER); the client is User:<sub>. With it,\nclients must authenticate. Allowed: true, false.",
            ),
        ],
    },
    Section {
        path: "listeners.quic",
        doc: "The device protocol over QUIC (UDP, always encrypted). May share a port number\nwith a TCP listener.",
        keys: &[
            key(
                "enabled",
                Bool,
                "Serve this listener. Allowed: true, false.",
            ),
            key("address", Addr, "UDP address to bind."),
            key(
                "cert",
                Text,
                "PEM certificate chain. \"\" = a self-signed certificate generated in data_dir\non first start; its fingerprint is printed for devices to pin.",
            ),
            key(
                "key",
                Text,
                "PEM private key of cert. Set both cert and key, or neither.",
            ),
            key(
                "idle_timeout",
                Duration,
                "Close a connection with no packets for this long. Quiet devices stay connected\nby sending keep-alives (the device SDK sends one every 10s, so keep this above\nthat). Allowed: 1ms..=1h.",
            ),
            key(
                "max_streams",
                Int,
                "Kafka sessions (bidirectional streams) one connection may have open at once:\nthe device SDK's producing session plus one per subscription. A device that\nopens more waits until one closes. Allowed: 1..=1024.",
            ),
            key(
                "client_auth",
                Choice,
                "How devices prove who they are. none = everyone is User:ANONYMOUS (keep\nthe listener on loopback or a closed network); mtls = a client certificate\nsigned by client_ca, principal User:<CN>; token = SASL PLAIN with a token\nfrom token_file, principal User:<device-name>. Allowed: none, mtls, token.",
            ),
            key(
                "client_ca",
                Text,
                "PEM CA certificate(s) that sign device certificates. Required with\nclient_auth = \"mtls\".",
            ),
            key(
                "client_principal",
                Choice,
                "With client_auth = \"mtls\": a device certificate's principal. cn = User:<CN>;\ndn = User:<subject DN> as Kafka writes it. Allowed: cn, dn.",
            ),
            key(
                "token_file",
                Text,
                "File of device tokens, one \"<device-name> <token>\" per line (# comments).\nRequired with client_auth = \"token\". Read at start-up and again whenever\nit changes: new connections go by the new tokens.",
            ),
        ],
    },
    Section {
        path: "listeners.admin",
        doc: "HTTP: Prometheus metrics and health. Unauthenticated: keep it on a trusted network.",
        keys: &[
            key(
                "enabled",
                Bool,
                "Serve this listener. Allowed: true, false.",
            ),
            key("address", Addr, "TCP address to bind."),
        ],
    },
    Section {
        path: "log",
        doc: "Storage defaults for every topic. A topic may override them with Kafka's config\nnames (segment.bytes, retention.ms, cleanup.policy, ...).",
        keys: &[
            key(
                "segment_bytes",
                Bytes,
                "Roll the active segment at this size. Retention deletes whole segments:\nsmaller frees space sooner but costs more files. Allowed: 1KiB..=2GiB.",
            ),
            key(
                "segment_age",
                Duration,
                "Roll the active segment after this age even if not full. Allowed: more than 0s.",
            ),
            key(
                "retention",
                Duration,
                "Delete segments older than this. \"forever\" (or -1) = keep by age forever.",
            ),
            key(
                "retention_bytes",
                Bytes,
                "Delete the oldest segments once a partition holds more than this.\n\"unlimited\" (or -1) = no size limit; set one on a small disk.",
            ),
            key(
                "index_interval_bytes",
                Bytes,
                "Bytes between offset-index entries: smaller = faster fetch lookups, larger\nindexes. Allowed: 0..=2GiB.",
            ),
            key(
                "flush",
                Choice,
                "When appends are fsynced. never = leave it to the OS page cache (a power cut\nloses recent data); interval = fsync every flush_interval; always = fsync\nbefore acknowledging every append (slowest, loses nothing acknowledged).\nAllowed: never, interval, always.",
            ),
            key(
                "flush_interval",
                Duration,
                "Time between fsyncs when flush = \"interval\": the most acknowledged data a\npower cut can lose. Must be more than 0s with flush = \"interval\".",
            ),
            key(
                "cleanup_policy",
                Choice,
                "What happens to old data: delete segments, compact to the latest record per\nkey, or both. Allowed: delete, compact, compact,delete.",
            ),
            key(
                "timestamp_type",
                Choice,
                "Record timestamps: the producer's, or the broker's clock at append.\nAllowed: CreateTime, LogAppendTime.",
            ),
            key(
                "max_message_bytes",
                Bytes,
                "Largest record batch accepted (Kafka's max.message.bytes); consumers need\nfetch buffers this big. A compressed batch whose records inflate past 16 times\nthis is refused (INVALID_RECORD). Allowed: 1..=max_request_bytes.",
            ),
            key(
                "delete_retention",
                Duration,
                "How long tombstones survive compaction, so consumers see the delete.",
            ),
            key(
                "min_cleanable_dirty_ratio",
                Float,
                "Compacted topics: clean a partition again once this share of its sealed data\nis new (Kafka's default; 0.0 = whenever a segment is sealed: a smaller disk for\nseveral times the writes). Allowed: 0.0..=1.0.",
            ),
            key(
                "timestamp_before_max",
                Duration,
                "CreateTime topics: refuse a batch holding a record whose own timestamp is\nolder than this (INVALID_TIMESTAMP). \"forever\" (or -1) = no bound.",
            ),
            key(
                "timestamp_after_max",
                Duration,
                "CreateTime topics: refuse a batch holding a record whose own timestamp is\nfurther ahead than this, e.g. from a device whose clock runs ahead; such\nrecords otherwise outlive retention. \"forever\" (or -1) = no bound.",
            ),
            key(
                "retention_check_interval",
                Duration,
                "How often retention looks for segments to delete (compaction looks at least\nthis often too). Allowed: more than 0s.",
            ),
            key(
                "compaction_check_interval",
                Duration,
                "How often compaction looks for compacted partitions dirty enough to clean\n(Kafka's log.cleaner.backoff.ms). Allowed: more than 0s.",
            ),
        ],
    },
    Section {
        path: "groups",
        doc: "The consumer-group coordinator.",
        keys: &[
            key(
                "min_session_timeout",
                Duration,
                "Smallest session timeout a consumer may ask for. Lower detects failures\nsooner at the cost of more heartbeats. Allowed: up to max_session_timeout.",
            ),
            key(
                "max_session_timeout",
                Duration,
                "Largest session timeout a consumer may ask for; a dead consumer holds its\npartitions up to this long.",
            ),
            key(
                "initial_rebalance_delay",
                Duration,
                "Wait before a new group's first rebalance so members joining together cause\none rebalance. 0s suits a single edge node. At most 24d (Kafka's int of ms).",
            ),
            key(
                "offsets_retention",
                Duration,
                "How long committed offsets of an empty group are kept (after it emptied and\nits last commit); a group without a protocol type (one that only commits: a consumer\nassigning itself partitions) loses each offset this long after its commit, as in\nKafka (checked every minute).",
            ),
            key(
                "consumer_session_timeout",
                Duration,
                "Consumers of the consumer group protocol (group.protocol=consumer) that have\nnot heartbeated for this long leave their group. Allowed: up to 1h.",
            ),
            key(
                "consumer_heartbeat_interval",
                Duration,
                "How often consumers of the consumer group protocol heartbeat. Allowed: less\nthan consumer_session_timeout.",
            ),
            key(
                "consumer_min_session_timeout",
                Duration,
                "The shortest consumer.session.timeout.ms a group's own config may set\n(kafka-configs --entity-type groups); consumer_session_timeout is always\nallowed. Allowed: more than 0s, up to consumer_max_session_timeout.",
            ),
            key(
                "consumer_max_session_timeout",
                Duration,
                "The longest consumer.session.timeout.ms a group's own config may set.",
            ),
            key(
                "consumer_min_heartbeat_interval",
                Duration,
                "The shortest consumer.heartbeat.interval.ms a group's own config may set;\nconsumer_heartbeat_interval is always allowed. Allowed: more than 0s, up to\nconsumer_max_heartbeat_interval.",
            ),
            key(
                "consumer_max_heartbeat_interval",
                Duration,
                "The longest consumer.heartbeat.interval.ms a group's own config may set.",
            ),
        ],
    },
    Section {
        path: "acls",
        doc: "Authorization by Kafka ACLs, on every listener (Kafka, TLS and QUIC).",
        keys: &[
            key(
                "enabled",
                Bool,
                "Check every request against the ACLs. false = every principal may do everything.\nACLs are managed with runnel acls, kafka-acls.sh or an admin client (Kafka's\nCreateAcls, DescribeAcls, DeleteAcls) and kept in the metadata database.\nAllowed: true, false.",
            ),
            key(
                "super_users",
                List,
                "Principals allowed everything, such as [\"User:admin\"]. Without one, only an ACL\ncan let anyone create ACLs. From the environment: comma-separated.",
            ),
            key(
                "allow_if_no_acl",
                Bool,
                "Allow what is done to a resource that no ACL names (Kafka's\nallow.everyone.if.no.acl.found). false = what no ACL allows is refused.",
            ),
        ],
    },
    Section {
        path: "oauthbearer",
        doc: "SASL OAUTHBEARER for the listeners with sasl_oauthbearer = true: tokens of an\nidentity provider, checked as Kafka's JWKS validator checks them.",
        keys: &[
            key(
                "jwks_file",
                Text,
                "The identity provider's signing keys: the JWKS document its jwks_uri serves,\nsaved to a file. Read at start-up and again when it changes (keys rotate\nwithout a restart). Required by sasl_oauthbearer.",
            ),
            key(
                "expected_issuer",
                Text,
                "The iss a token must carry. \"\" = any.",
            ),
            key(
                "expected_audience",
                List,
                "A token's aud must name one of these. [] = any. From the environment:\ncomma-separated.",
            ),
            key(
                "principal_claim",
                Text,
                "The claim naming the principal: User:<value>. Allowed: not empty.",
            ),
            key(
                "clock_skew",
                Duration,
                "How far apart the broker's and the provider's clocks may be when expiry and\nnot-before times are checked. Allowed: up to 1d.",
            ),
        ],
    },
    Section {
        path: "cluster",
        doc: "Peer brokers holding copies of this one's topics: one leader takes writes, the others follow.",
        keys: &[
            key(
                "brokers",
                List,
                "Every broker of the cluster, this one included, as \"<node_id>@<host>:<port>\":\nthe plaintext Kafka listener as peers and clients reach it. Empty = this broker\nalone. Every broker copies every topic. From the environment: comma-separated.",
            ),
            key(
                "leader",
                Int,
                "Node id of the broker that takes writes and serves consumers; 0 = the lowest id\nin brokers. To move the lead, change it on every broker and restart them.\nAllowed: 0 or the id of one of brokers.",
            ),
            key(
                "min_insync_replicas",
                Int,
                "Brokers (the leader included) that must be in sync for a write with acks=all;\nwith fewer it is refused (NOT_ENOUGH_REPLICAS) and nothing is written.",
            ),
            key(
                "replica_lag_time_max",
                Duration,
                "A follower that has not caught up with the leader for this long leaves the\nin-sync set, and acks=all writes stop waiting for it.",
            ),
            key(
                "replica_fetch_wait",
                Duration,
                "Longest a follower's fetch waits at the leader for new records.",
            ),
            key(
                "sasl_mechanism",
                Choice,
                "How a follower logs in to the leader's listener when it asks for SASL; the\nfollower is then User:<sasl_username> to the leader's ACLs. \"\" = no login.\nAllowed: \"\", SCRAM-SHA-512, SCRAM-SHA-256, PLAIN.",
            ),
            key("sasl_username", Text, "The user a follower logs in as."),
            key(
                "sasl_password",
                Text,
                "That user's password. Keep this file readable by the broker only.",
            ),
            key(
                "tls_brokers",
                List,
                "Every broker's TLS Kafka listener, as \"<node_id>@<host>:<port>\" with the ids of\nbrokers. Metadata on a TLS listener names these. Empty = TLS clients are sent to\nthe plaintext addresses. From the environment: comma-separated.",
            ),
            key(
                "tls",
                Bool,
                "Followers reach the leader over TLS at its tls_brokers address, checking its\ncertificate against tls_ca. false = plaintext, to its brokers address.",
            ),
            key(
                "tls_ca",
                Text,
                "PEM CA certificate(s) the leader's certificate must be signed by. Required with tls.",
            ),
            key(
                "tls_cert",
                Text,
                "PEM certificate chain a follower presents to a leader whose TLS listener asks for\none (client_ca). \"\" = none.",
            ),
            key(
                "tls_key",
                Text,
                "PEM private key of tls_cert. Keep it readable by the broker's user only.",
            ),
        ],
    },
    Section {
        path: "plugins",
        doc: "WebAssembly plugins: filters and transforms with the topics that run them on produce, and quota policies.",
        keys: &[
            key(
                "call_timeout",
                Duration,
                "Longest one plugin call (one batch, one plugin) may run, by the wall clock (waits\nfor a CPU count); then it fails and the binding's on_error decides. Bounds what a\nlooping plugin costs per batch. Default 1s. Allowed: more than 0s.",
            ),
            key(
                "memory_limit",
                Bytes,
                "Linear memory one plugin instance may grow to; a call needing more fails.\nAllowed: 1MiB..=4GiB.",
            ),
            key(
                "disable_after",
                Int,
                "A plugin whose calls fail this many times in a row is disabled until the plugins are\nreloaded or the broker restarts (one WARN line names it and its last error); bindings\nrunning it then apply their on_error policy without calling it. 0 = never disable.",
            ),
            key(
                "load",
                Tables,
                "Plugins to load, one [[plugins.load]] table each:\n  name = \"hot-only\"              # what bindings call it; unique\n  path = \"json_filter.wasm\"      # a wasm32-wasip2 component\n  config = \"temp > 20\"           # passed to the plugin's init; default \"\"",
            ),
            key(
                "bindings",
                Tables,
                "Topic plugin chains, one [[plugins.bindings]] table each:\n  topic = \"readings\"\n  chain = [\"hot-only\"]            # run in order\n  on_error = \"fail-closed\"       # or \"fail-open\" (the batch passes), or \"dead-letter\"; default fail-closed\n  dead_letter_topic = \"failed\"   # with \"dead-letter\" only: where a failing batch's records go; default none",
            ),
            key(
                "quotas",
                Tables,
                "Quota policies, one [[plugins.quotas]] table each:\n  plugin = \"per-client\"          # a [[plugins.load]] name (a quota-world plugin)\n  listeners = [\"kafka\", \"quic\"]   # default [] = every listener (kafka, kafka_tls, quic)\n  principals = [\"User:ANONYMOUS\"] # default [] = every principal\n  apis = [\"produce\", \"fetch\"]     # default [\"produce\"]\n  on_error = \"fail-open\"         # or \"fail-closed\" (a failing call rejects); default fail-open",
            ),
        ],
    },
    Section {
        path: "federation",
        doc: "Forwarding of local topics to central Kafka clusters (store and forward): records stay in\nthe local log, subject to its retention, until the remote cluster has acknowledged them.",
        keys: &[
            key(
                "retry_backoff",
                Duration,
                "Wait after a failed send before the records are sent again; doubles after each\nfailure in a row, up to retry_backoff_max.",
            ),
            key(
                "retry_backoff_max",
                Duration,
                "The longest wait between two tries of a failed send.",
            ),
            key(
                "links",
                Tables,
                "Remote clusters, one [[federation.links]] table each:\n  name = \"central\"               # in logs and metrics; unique; keeps the link's positions (renamed, it starts over)\n  bootstrap_servers = \"kafka:9092\"\n  topics = [\"readings\", \"alerts.*\"] # names, or prefixes ending in '*'\n  remote_topic = \"site-7.{topic}\"  # default \"{topic}\"\n  [federation.links.client]        # librdkafka producer properties (TLS, SASL, compression)\n  \"security.protocol\" = \"SASL_SSL\"",
            ),
        ],
    },
];

/// The section with this dotted path, if it holds keys.
pub(crate) fn section(path: &str) -> Option<&'static Section> {
    SECTIONS.iter().find(|s| s.path == path)
}

/// The names allowed directly under `path` ("" = the document root): the keys of a section, or
/// the names of the sections nested below it, in file order.
pub(crate) fn allowed_under(path: &str) -> Vec<&'static str> {
    if let Some(section) = section(path) {
        return section.keys.iter().map(|k| k.name).collect();
    }
    let mut names: Vec<&'static str> = Vec::new();
    for section in SECTIONS {
        let rest = if path.is_empty() {
            Some(section.path)
        } else {
            section
                .path
                .strip_prefix(path)
                .and_then(|r| r.strip_prefix('.'))
        };
        if let Some(rest) = rest {
            let first = rest.split('.').next().unwrap_or(rest);
            if !names.contains(&first) {
                names.push(first);
            }
        }
    }
    names
}

/// The key at this dotted path, if it is a key (not a section).
pub(crate) fn key_at(path: &str) -> Option<&'static Key> {
    let (parent, name) = path.rsplit_once('.')?;
    section(parent)?.keys.iter().find(|k| k.name == name)
}

/// Joins a parent path and a name.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// The first segment of `segments` that is not allowed where it appears, as (path up to and
/// including it, the names allowed there); `None` if the whole path is known.
pub(crate) fn first_unknown(segments: &[&str]) -> Option<(String, Vec<&'static str>)> {
    let mut path = String::new();
    for segment in segments {
        let allowed = allowed_under(&path);
        path = join(&path, segment);
        if !allowed.contains(segment) {
            return Some((path, allowed));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
        for (name, value) in table {
            let path = join(prefix, name);
            match value {
                toml::Value::Table(inner) => leaves(inner, &path, out),
                other => out.push((path, other.clone())),
            }
        }
    }

    /// The key table and the serde structs must name the same keys, with matching kinds.
    #[test]
    fn key_table_matches_the_structs() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let mut from_structs = Vec::new();
        leaves(&defaults, "", &mut from_structs);
        let mut from_table: Vec<String> = SECTIONS
            .iter()
            .flat_map(|s| s.keys.iter().map(|k| join(s.path, k.name)))
            .collect();
        let mut struct_paths: Vec<String> = from_structs.iter().map(|(p, _)| p.clone()).collect();
        from_table.sort();
        struct_paths.sort();
        assert_eq!(from_table, struct_paths);
        for (path, value) in &from_structs {
            let kind = key_at(path).unwrap().kind;
            let ok = match value {
                toml::Value::Boolean(_) => kind == Kind::Bool,
                toml::Value::Integer(_) => matches!(kind, Kind::Int | Kind::Bytes),
                toml::Value::Float(_) => kind == Kind::Float,
                toml::Value::String(_) => kind != Kind::Bool && kind != Kind::Int,
                toml::Value::Array(_) => matches!(kind, Kind::Tables | Kind::List),
                _ => false,
            };
            assert!(ok, "{path} has kind {kind:?} but default {value}");
        }
    }

    #[test]
    fn allowed_names_in_file_order() {
        assert_eq!(
            allowed_under(""),
            [
                "broker",
                "listeners",
                "log",
                "groups",
                "acls",
                "oauthbearer",
                "cluster",
                "plugins",
                "federation"
            ]
        );
        assert_eq!(
            allowed_under("listeners"),
            ["kafka", "kafka_tls", "quic", "admin"]
        );
        assert_eq!(allowed_under("listeners.admin"), ["enabled", "address"]);
        assert!(allowed_under("log.flush").is_empty());
        assert_eq!(first_unknown(&["log", "flush"]), None);
        assert_eq!(
            first_unknown(&["listeners", "kafak", "address"]),
            Some((
                "listeners.kafak".to_owned(),
                vec!["kafka", "kafka_tls", "quic", "admin"]
            ))
        );
    }
}
