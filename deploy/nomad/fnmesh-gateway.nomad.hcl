# fnmesh gateways of one region: HTTP API, recorder, reconciler. Stateless: any number of them
# share PostgreSQL (metadata), S3 (code), Redis (rate limits) and NATS JetStream (work).
# Every FNMESH_* variable here is checked against the binary by tests/tests/deploy_files.rs.
variable "region" {
  type    = string
  default = "local"
}

variable "image" {
  type    = string
  default = "fnmesh:latest"
}

job "fnmesh-gateway" {
  type = "service"

  group "gateway" {
    count = 2

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name = "fnmesh-gateway"
      port = "http"
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
        image   = var.image
        command = "fnmesh"
        args    = ["gateway"]
        ports   = ["http"]
      }

      env {
        FNMESH_LISTEN        = "0.0.0.0:8080"
        FNMESH_REGION        = var.region
        FNMESH_NATS_URL      = "nats://nats.service.consul:4222"
        FNMESH_NATS_CREDS    = "/secrets/fnmesh.creds"
        FNMESH_DATABASE_URL  = "postgres://fnmesh@postgres.service.consul:5432/fnmesh"
        FNMESH_MIGRATE       = "true"
        FNMESH_REDIS_URL     = "redis://redis.service.consul:6379"
        FNMESH_CODE_STORE    = "s3://fnmesh-code"
        FNMESH_S3_ENDPOINT   = "http://s3.service.consul:9000"
        FNMESH_ACK_WAIT_SECS = "30"
        FNMESH_MAX_DELIVER   = "3"
        FNMESH_LOG_FORMAT    = "json"
      }

      # The admin key, NATS credentials and S3 keys come from Nomad variables, never from
      # the job file.
      template {
        destination = "secrets/fnmesh.env"
        env         = true
        data        = <<-EOT
          FNMESH_ADMIN_KEY={{ with nomadVar "nomad/jobs/fnmesh-gateway" }}{{ .admin_key }}{{ end }}
          AWS_ACCESS_KEY_ID={{ with nomadVar "nomad/jobs/fnmesh-gateway" }}{{ .s3_key_id }}{{ end }}
          AWS_SECRET_ACCESS_KEY={{ with nomadVar "nomad/jobs/fnmesh-gateway" }}{{ .s3_secret }}{{ end }}
          FNMESH_SIGNING_KEY={{ with nomadVar "nomad/jobs/fnmesh-gateway" }}{{ .signing_key }}{{ end }}
        EOT
      }

      template {
        destination = "secrets/fnmesh.creds"
        data        = "{{ with nomadVar \"nomad/jobs/fnmesh-gateway\" }}{{ .nats_creds }}{{ end }}"
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
