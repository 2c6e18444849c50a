#!/bin/sh
echo "hello from $(uname -m): $(cat /built-on)"
