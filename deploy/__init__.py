"""Deployment helpers: `deploy.cluster` runs the production shape locally without Docker."""
