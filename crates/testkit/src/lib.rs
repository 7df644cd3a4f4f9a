//! Test support: throwaway PostgreSQL clusters and scripted fake servers.
