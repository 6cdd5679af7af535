//! `s3mount-faultproxy`: the fault-injecting S3 proxy as a standalone program, for scripts.
//!
//! `s3mount-faultproxy --listen 127.0.0.1:0 --upstream 127.0.0.1:9000` prints the address it
//! listens on, then serves until killed. Rules: `PUT /__faults/rules` with a JSON array of
//! [`s3mount_tests::faultproxy::Rule`]; counts: `GET /__faults/counts`.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "s3mount-faultproxy",
    about = "Fault-injecting proxy in front of a loopback S3 server"
)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The real S3 server (loopback only).
    #[arg(long)]
    upstream: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let proxy = s3mount_tests::faultproxy::FaultProxy::start(args.listen, args.upstream).await?;
    println!("http://{}", proxy.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
