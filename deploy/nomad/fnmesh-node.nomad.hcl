# fnmesh worker nodes: one per client machine (a system job) of a region, the hub's or an
# edge's. A node needs nothing but NATS: it pulls work from its region's JetStream, fetches code
# from the region's NATS object store and reports results back over NATS. It finds its region's
# NATS server(s) through Nomad's service discovery (`fnmesh-nats`, registered by
# fnmesh-nats-hub.nomad.hcl in the hub's Nomad region and by fnmesh-edge.nomad.hcl in an
# edge's). Nodes create sandboxes (cgroups, namespaces): the task is privileged, and needs the
# host's cgroup namespace, which Nomad's docker driver cannot ask for per task: on cgroup v2
# machines set `"default-cgroupns-mode": "host"` in the Docker daemon's daemon.json (compose's
# `cgroup: host`).
#   nomad job run fnmesh-node.nomad.hcl                                  # the hub
#   nomad job run -var region=eu -var nomad_region=eu fnmesh-node.nomad.hcl   # edge eu
# Every FNMESH_* variable here is checked against the binary by tests/tests/deploy_files.rs,
# and tests/tests/deploy_smoke.rs runs this task.
variable "region" {
  type        = string
  default     = "hub"
  description = "FNMESH_REGION: hub, or the edge's name"
}

variable "nomad_region" {
  type        = string
  default     = "global"
  description = "the Nomad region: the hub's, or the edge's (named like the edge)"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "fnmesh:latest"
}

job "fnmesh-node" {
  namespace   = "fnmesh"
  region      = var.nomad_region
  datacenters = var.datacenters
  type        = "system"

  group "node" {
    # System jobs roll one machine at a time (they take no canaries).
    update {
      max_parallel = 1
      stagger      = "30s"
    }

    network {
      mode = "host"
      port "metrics" {}
    }

    # This machine's own NATS credentials, minted for it with
    # `fnmesh nats add-node --id <Nomad client name>` and kept in the host volume
    # `fnmesh-node-creds` (file node.creds): a node may write only its own registry entry and
    # read only its own inboxes, so its credentials are not a shared Nomad variable.
    volume "creds" {
      type      = "host"
      source    = "fnmesh-node-creds"
      read_only = true
    }

    service {
      name     = "fnmesh-node"
      provider = "nomad"
      port     = "metrics"
      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "node" {
      driver = "docker"

      config {
        image        = var.image
        network_mode = "host"
        command      = "fnmesh"
        args         = ["node"]
        privileged   = true
      }

      volume_mount {
        volume      = "creds"
        destination = "/etc/fnmesh"
        read_only   = true
      }

      # No FNMESH_NODE_ID: a node takes its id from its own NATS credentials.
      env {
        FNMESH_REGION             = var.region
        FNMESH_NATS_CREDS         = "/etc/fnmesh/node.creds"
        FNMESH_DATA_DIR           = "${NOMAD_ALLOC_DIR}/data"
        FNMESH_TRUSTED_KEYS_FILE  = "${NOMAD_SECRETS_DIR}/trusted.keys"
        FNMESH_SECRETS_KEY_FILE   = "${NOMAD_SECRETS_DIR}/secrets.key"
        FNMESH_METRICS_LISTEN     = "${NOMAD_ADDR_metrics}"
        FNMESH_METRICS_TOKEN_FILE = "${NOMAD_SECRETS_DIR}/metrics.token"
        FNMESH_NODE_SLOTS         = "16"
        FNMESH_HEARTBEAT_SECS     = "2"
        FNMESH_ACK_WAIT_SECS      = "30"
        FNMESH_DRAIN_SECS         = "25"
        FNMESH_LOG_FORMAT         = "json"
      }

      # The region's NATS servers, from service discovery.
      template {
        destination = "secrets/fnmesh.env"
        env         = true
        change_mode = "restart"
        data        = "FNMESH_NATS_URL={{ range nomadService \"fnmesh-nats\" }}nats://{{ .Address }}:{{ .Port }},{{ end }}"
      }

      # The gateways' public work signing key (`trusted.keys` of `fnmesh nats init`): a node
      # runs only work they signed.
      template {
        destination = "secrets/trusted.keys"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .trusted_keys }}{{ end }}"
      }

      # The deployment's one secrets key: gateways seal function secrets with it.
      template {
        destination = "secrets/secrets.key"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .secrets_key }}{{ end }}"
      }

      template {
        destination = "secrets/metrics.token"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .metrics_token }}{{ end }}"
      }

      # SIGTERM starts the drain: stop pulling, finish in-flight work (FNMESH_DRAIN_SECS),
      # leave the registry; within Nomad's default 30 s maximum kill_timeout.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 2000
        memory = 2048
      }
    }
  }
}
