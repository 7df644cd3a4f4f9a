//! `ioxide-pg`: a PostgreSQL driver over the ring. (Protocol core, connection and pool land here.)
