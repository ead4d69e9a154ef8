# Provider and Terraform versions. Cloud Build (cloudbuild.yaml) adds a `backend "gcs" {}` override at run
# time, so this directory also works with local state for a first try.
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.40, < 7"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id
}
