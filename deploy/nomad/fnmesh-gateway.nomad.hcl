# fnmesh gateways of the hub: HTTP API, recorder, reconciler. Stateless: any number of them
# share PostgreSQL (metadata), S3 (code), Redis (rate limits) and the hub's NATS cluster
# (fnmesh-nats-hub.nomad.hcl). The backends are external services named in the Nomad
# variable nomad/jobs/fnmesh-gateway, with every key this gateway shares with the others
# (put-variables.sh): the secrets key, the JWT key, the work signing key, the admin key.
# Every FNMESH_* variable here is checked against the binary by tests/tests/deploy_files.rs,
# and tests/tests/deploy_smoke.rs runs this task.
variable "nomad_region" {
  type    = string
  default = "global"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "fnmesh:latest"
}

variable "stream_replicas" {
  type        = number
  default     = 3
  description = "JetStream replicas of the streams and buckets the gateways create: the hub cluster's 3 servers"
}

job "fnmesh-gateway" {
  namespace   = "fnmesh"
  region      = var.nomad_region
  datacenters = var.datacenters
  type        = "service"

  group "gateway" {
    count = 2

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    # A new version starts as one canary beside the old ones; it is promoted by hand
    # (`nomad deployment promote`) once it is healthy, and a failed deployment rolls back.
    update {
      max_parallel     = 1
      canary           = 1
      min_healthy_time = "10s"
      healthy_deadline = "2m"
      auto_revert      = true
      auto_promote     = false
    }

    network {
      mode = "host"
      port "http" {}
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

      env {
        FNMESH_LISTEN                = "${NOMAD_ADDR_http}"
        FNMESH_REGION                = "hub"
        FNMESH_DATA_DIR              = "${NOMAD_ALLOC_DIR}/data"
        FNMESH_NATS_CREDS            = "${NOMAD_SECRETS_DIR}/nats.creds"
        FNMESH_SIGNING_KEY_FILE      = "${NOMAD_SECRETS_DIR}/signing.nk"
        FNMESH_SECRETS_KEY_FILE      = "${NOMAD_SECRETS_DIR}/secrets.key"
        FNMESH_JWT_HS256_SECRET_FILE = "${NOMAD_SECRETS_DIR}/jwt.secret"
        FNMESH_METRICS_TOKEN_FILE    = "${NOMAD_SECRETS_DIR}/metrics.token"
        FNMESH_STREAM_REPLICAS       = var.stream_replicas
        FNMESH_MIGRATE               = "true"
        FNMESH_RATE_LIMIT_FAILURE    = "fail_open"
        FNMESH_S3_PATH_STYLE         = "true"
        FNMESH_ACK_WAIT_SECS         = "30"
        FNMESH_MAX_DELIVER           = "3"
        FNMESH_DRAIN_SECS            = "20"
        FNMESH_LOG_FORMAT            = "json"
      }

      # The backends, the admin key and the S3 keys come from Nomad variables, never from the
      # job file; NATS from service discovery (every server of the hub cluster).
      template {
        destination = "secrets/fnmesh.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/fnmesh-gateway" }}
          FNMESH_ADMIN_KEY={{ .admin_key }}
          FNMESH_DATABASE_URL={{ .database_url }}
          FNMESH_REDIS_URL={{ .redis_url }}
          FNMESH_CODE_STORE=s3://{{ .s3_bucket }}
          FNMESH_S3_ENDPOINT={{ .s3_endpoint }}
          FNMESH_S3_REGION={{ .s3_region }}
          AWS_ACCESS_KEY_ID={{ .s3_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .s3_secret }}
          {{ end }}
          FNMESH_NATS_URL={{ range nomadService "fnmesh-nats" }}nats://{{ .Address }}:{{ .Port }},{{ end }}
        EOT
      }

      template {
        destination = "secrets/nats.creds"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-gateway\" }}{{ .nats_creds }}{{ end }}"
      }

      template {
        destination = "secrets/signing.nk"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-gateway\" }}{{ .signing_key }}{{ end }}"
      }

      template {
        destination = "secrets/jwt.secret"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-gateway\" }}{{ .jwt_secret }}{{ end }}"
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
