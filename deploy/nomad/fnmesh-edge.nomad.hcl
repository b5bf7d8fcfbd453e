# An edge region: its own NATS server (a leaf node of the hub with its own JetStream domain,
# named like the region) and its gateway. The edge's worker nodes are fnmesh-node.nomad.hcl run
# with `-var region=<edge>` in the same Nomad region. Run one copy per edge, each in the Nomad
# region named like the edge:
#   nomad job run -region eu -var edge=eu -var hub_leaf_url=nats-leaf://hub.example:7422 \
#     fnmesh-edge.nomad.hcl
# The gateway keeps its metadata (SQLite) and code on a host volume of the machine it runs
# on: one gateway per edge. Secrets and keys come from Nomad variables (put-variables.sh).
variable "edge" {
  type        = string
  description = "the edge's region name (FNMESH_REGION and JetStream domain), an edge of the setup"
}

variable "hub_leaf_url" {
  type        = string
  description = "where the hub's leafnode port is reached from this edge, e.g. nats-leaf://hub.example:7422"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "fnmesh:latest"
}

variable "nats_image" {
  type    = string
  default = "nats:2.11.9-alpine"
}

job "fnmesh-edge" {
  namespace   = "fnmesh"
  region      = var.edge
  datacenters = var.datacenters
  type        = "service"

  group "nats" {
    count = 1

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      healthy_deadline = "3m"
      auto_revert      = true
    }

    network {
      mode = "host"
      port "client" {
        static = 4222
      }
      port "monitor" {
        static = 8222
      }
    }

    volume "data" {
      type   = "host"
      source = "fnmesh-nats"
    }

    service {
      name     = "fnmesh-nats"
      provider = "nomad"
      port     = "client"
      check {
        type     = "http"
        port     = "monitor"
        path     = "/healthz?js-enabled-only=true"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "nats" {
      driver = "docker"

      config {
        image        = var.nats_image
        network_mode = "host"
        args         = ["-c", "${NOMAD_TASK_DIR}/edge.conf"]
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      # The leaf credentials of this edge (leaf-<edge>.creds of `fnmesh nats init --edge`).
      template {
        destination = "secrets/leaf.creds"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-edge/nats\" }}{{ .leaf_creds }}{{ end }}"
      }

      # edge-<edge>.conf of `fnmesh nats init --edge`, with this machine's addresses.
      template {
        destination = "local/edge.conf"
        data        = <<-EOT
          server_name: "${var.edge}"
          host: "{{ env "NOMAD_IP_client" }}"
          port: {{ env "NOMAD_PORT_client" }}
          http_port: {{ env "NOMAD_PORT_monitor" }}
          {{ with nomadVar "nomad/jobs" }}{{ .nats_accounts }}{{ end }}
          jetstream {
            store_dir: "/data"
            domain: "${var.edge}"
            sync_interval: "always"
          }
          leafnodes {
            remotes: [
              {
                urls: ["${var.hub_leaf_url}"]
                account: {{ with nomadVar "nomad/jobs/fnmesh-edge/nats" }}{{ .fnmesh_account }}{{ end }}
                credentials: "{{ env "NOMAD_SECRETS_DIR" }}/leaf.creds"
              }
            ]
          }
        EOT
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  group "gateway" {
    count = 1

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      healthy_deadline = "3m"
      auto_revert      = true
    }

    network {
      mode = "host"
      port "http" {}
    }

    volume "data" {
      type   = "host"
      source = "fnmesh-edge-gateway"
    }

    service {
      name     = "fnmesh-gateway"
      provider = "nomad"
      port     = "http"
      check {
        type     = "http"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "gateway" {
      driver = "docker"

      config {
        image        = var.image
        network_mode = "host"
        command      = "fnmesh"
        args         = ["gateway"]
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/fnmesh"
      }

      env {
        FNMESH_LISTEN                = "${NOMAD_ADDR_http}"
        FNMESH_REGION                = var.edge
        # Follows the hub's catalog: functions deployed at the hub run here.
        FNMESH_HUB_REGION            = "hub"
        FNMESH_DATA_DIR              = "/var/lib/fnmesh"
        FNMESH_NATS_CREDS            = "${NOMAD_SECRETS_DIR}/nats.creds"
        FNMESH_SIGNING_KEY_FILE      = "${NOMAD_SECRETS_DIR}/signing.nk"
        FNMESH_SECRETS_KEY_FILE      = "${NOMAD_SECRETS_DIR}/secrets.key"
        FNMESH_JWT_HS256_SECRET_FILE = "${NOMAD_SECRETS_DIR}/jwt.secret"
        FNMESH_METRICS_TOKEN_FILE    = "${NOMAD_SECRETS_DIR}/metrics.token"
        FNMESH_DRAIN_SECS            = "20"
        FNMESH_LOG_FORMAT            = "json"
      }

      template {
        destination = "secrets/fnmesh.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/fnmesh-edge/gateway" }}
          FNMESH_ADMIN_KEY={{ .admin_key }}
          {{ end }}
          FNMESH_NATS_URL={{ range nomadService "fnmesh-nats" }}nats://{{ .Address }}:{{ .Port }},{{ end }}
        EOT
      }

      template {
        destination = "secrets/nats.creds"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-edge/gateway\" }}{{ .nats_creds }}{{ end }}"
      }

      template {
        destination = "secrets/signing.nk"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-edge/gateway\" }}{{ .signing_key }}{{ end }}"
      }

      template {
        destination = "secrets/jwt.secret"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-edge/gateway\" }}{{ .jwt_secret }}{{ end }}"
      }

      template {
        destination = "secrets/secrets.key"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .secrets_key }}{{ end }}"
      }

      template {
        destination = "secrets/metrics.token"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .metrics_token }}{{ end }}"
      }

      # SIGTERM drains (FNMESH_DRAIN_SECS) well within Nomad's default 30 s maximum.
      kill_signal  = "SIGTERM"
      kill_timeout = "25s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
