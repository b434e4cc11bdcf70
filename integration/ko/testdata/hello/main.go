// Hello is the program the ko test builds into an image.
package main

import "fmt"

func main() {
	fmt.Println("hello from a ko image on a cached base")
}
